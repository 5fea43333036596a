// Examples to token ids and labels. Labels are the ids themselves where the loss applies and
// -100 elsewhere (the native loss shifts by one, as transformers does). Chat data goes through
// the tokenizer's chat template; each rendered piece is encoded on its own, so the prompt part
// is tokenized exactly as `applyChatTemplate(..., { addGenerationPrompt: true })` is at inference.
import type { ChatMessage, SpecialToken } from '../tokenizer'
import type { ChatTurn, Example } from './examples'

export const IGNORE = -100

/** What the data pipeline needs of a tokenizer (`Tokenizer` has it all). */
export interface TextTokenizer {
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[]
  applyChatTemplate(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): string
  /** Rendering off the JS thread; used by `loadData` when present. */
  applyChatTemplateAsync?(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): Promise<string>
  readonly chatTemplate: string | null
  readonly eosToken: SpecialToken | null
  readonly padToken: SpecialToken | null
}

export interface TokenizeOptions {
  /** Loss only on completions / assistant turns (default true). */
  maskPrompt?: boolean
  /** Longest example in tokens (default 2048). */
  maxSeqLength?: number
  /** Cut longer examples to maxSeqLength (default true); false makes them an error. */
  truncation?: boolean
  /** prompt/completion through the chat template, as mlx-lm does: 'auto' (default) when the tokenizer has one. */
  chatTemplateForCompletions?: boolean | 'auto'
}

export interface TokenizedExample {
  inputIds: number[]
  labels: number[]
  where: string
}

/** Tokens the loss counts: labels after the first position that are not -100. */
export function targetCount(labels: ArrayLike<number>): number {
  let n = 0
  for (let i = 1; i < labels.length; i++) if (labels[i] !== IGNORE) n++
  return n
}

type Piece = { text: string; train: boolean }
/** One chat-template rendering an example needs: these messages, with or without the generation prompt. */
type Render = { messages: ChatMessage[]; gen: boolean }

/**
 * The renderings a chat example needs, and how to cut them into pieces once rendered. Split in
 * two so the renderings can run on the native pool (`applyChatTemplateAsync`): a template is
 * user input, and a slow one must not stall the event loop while a dataset loads.
 */
function chatPlan(tok: TextTokenizer, messages: ChatTurn[], where: string, maskPrompt: boolean): { renders: Render[]; cut: (texts: string[]) => Piece[] } {
  if (!tok.chatTemplate) {
    throw new Error(`${where}: chat data needs a chat template, but this model's tokenizer has none (use "text" or "prompt"/"completion" records, or a model with a chat template)`)
  }
  const ms = messages as ChatMessage[]
  const renders: Render[] = [{ messages: ms, gen: false }]
  if (!maskPrompt) return { renders, cut: ([whole]) => [{ text: whole, train: true }] }
  const turns = messages.flatMap((m, i) => (m.role === 'assistant' ? [i] : []))
  for (const i of turns) renders.push({ messages: ms.slice(0, i), gen: true }, { messages: ms.slice(0, i + 1), gen: false })
  const cut = ([whole, ...rest]: string[]): Piece[] => {
    const pieces: Piece[] = []
    let done = ''
    for (let k = 0; k < turns.length; k++) {
      const [prefix, full] = [rest[2 * k], rest[2 * k + 1]]
      if (!prefix.startsWith(done) || !full.startsWith(prefix)) {
        throw new Error(`${where}: the chat template does not render this conversation turn by turn, so prompts cannot be masked; set maskPrompt: false`)
      }
      pieces.push({ text: prefix.slice(done.length), train: false }, { text: full.slice(prefix.length), train: true })
      done = full
    }
    if (whole.startsWith(done)) pieces.push({ text: whole.slice(done.length), train: false })
    return pieces
  }
  return { renders, cut }
}

/** What an example needs rendered, how to cut it into pieces, and whether EOS must be appended (plain text and plain completions). */
function plan(tok: TextTokenizer, ex: Example, o: Required<TokenizeOptions>): { renders: Render[]; cut: (texts: string[]) => Piece[]; addEos: boolean } {
  const fixed = (pieces: Piece[]) => ({ renders: [], cut: () => pieces, addEos: true })
  if (ex.kind === 'chat') return { ...chatPlan(tok, ex.messages, ex.where, o.maskPrompt), addEos: false }
  if (ex.kind === 'completion') {
    const asChat = o.chatTemplateForCompletions === 'auto' ? !!tok.chatTemplate : o.chatTemplateForCompletions
    const messages = [
      { role: 'user', content: ex.prompt },
      { role: 'assistant', content: ex.completion },
    ]
    if (asChat) return { ...chatPlan(tok, messages, ex.where, o.maskPrompt), addEos: false }
    return fixed([
      { text: ex.prompt, train: !o.maskPrompt },
      { text: ex.completion, train: true },
    ])
  }
  return fixed([{ text: ex.text, train: true }])
}

export function resolveTokenizeOptions(opts: TokenizeOptions = {}): Required<TokenizeOptions> {
  const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined))
  const o = { maskPrompt: true, maxSeqLength: 2048, truncation: true, chatTemplateForCompletions: 'auto' as const, ...given }
  if (!Number.isInteger(o.maxSeqLength) || o.maxSeqLength < 2) throw new Error(`maxSeqLength: expected an integer >= 2, found ${String(o.maxSeqLength)}`)
  return o
}

/**
 * Tokenizes one example. Returns null (and pushes a warning) when truncation left it with
 * nothing to learn; throws, naming the record, for an over-long example with truncation off.
 */
export function tokenizeExample(tok: TextTokenizer, ex: Example, o: Required<TokenizeOptions>, warnings: string[]): TokenizedExample | null {
  const p = plan(tok, ex, o)
  const texts = p.renders.map((r) => tok.applyChatTemplate(r.messages, { addGenerationPrompt: r.gen }))
  return encodePieces(tok, ex, p.cut(texts), p.addEos, o, warnings)
}

/** As `tokenizeExample`, with the chat template rendered off the JS thread when the tokenizer can (`applyChatTemplateAsync`). */
export async function tokenizeExampleAsync(tok: TextTokenizer, ex: Example, o: Required<TokenizeOptions>, warnings: string[]): Promise<TokenizedExample | null> {
  const p = plan(tok, ex, o)
  const render = (r: Render) => (tok.applyChatTemplateAsync ? tok.applyChatTemplateAsync(r.messages, { addGenerationPrompt: r.gen }) : tok.applyChatTemplate(r.messages, { addGenerationPrompt: r.gen }))
  const texts = await Promise.all(p.renders.map(render))
  return encodePieces(tok, ex, p.cut(texts), p.addEos, o, warnings)
}

function encodePieces(tok: TextTokenizer, ex: Example, parts: Piece[], addEos: boolean, o: Required<TokenizeOptions>, warnings: string[]): TokenizedExample | null {
  const inputIds: number[] = []
  const labels: number[] = []
  for (const p of parts) {
    if (p.text === '') continue
    const ids = tok.encode(p.text, { addSpecialTokens: inputIds.length === 0 })
    inputIds.push(...ids)
    labels.push(...(p.train ? ids : ids.map(() => IGNORE)))
  }
  // Plain text and completions end with EOS, so the model learns to stop (the chat template
  // already closes assistant turns).
  const eos = tok.eosToken?.id
  if (addEos && eos != null && inputIds.at(-1) !== eos) {
    inputIds.push(eos)
    labels.push(eos)
  }
  if (targetCount(labels) === 0) throw new Error(`${ex.where}: nothing to learn: the completion / assistant part is empty after tokenization`)
  if (inputIds.length > o.maxSeqLength) {
    if (!o.truncation) {
      throw new Error(`${ex.where}: the example has ${inputIds.length} tokens, more than maxSeqLength ${o.maxSeqLength} (raise maxSeqLength or turn truncation on)`)
    }
    inputIds.length = o.maxSeqLength
    labels.length = o.maxSeqLength
    if (targetCount(labels) === 0) {
      warnings.push(`${ex.where}: dropped: after truncation to ${o.maxSeqLength} tokens no completion / assistant token is left`)
      return null
    }
  }
  return { inputIds, labels, where: ex.where }
}
