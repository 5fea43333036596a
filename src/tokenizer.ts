import { native } from './native'
import { tokenIdArg, tokenIdList } from './inputs'

type NativeTokenizer = InstanceType<typeof native.NativeTokenizer>

export interface ChatMessage {
  role: string
  content: string
  [key: string]: unknown
}

export interface ChatTemplateOptions {
  /** Append the prompt that starts the assistant's turn. */
  addGenerationPrompt?: boolean
  /** Further template variables (e.g. `tools`). */
  variables?: Record<string, unknown>
}

export interface SpecialToken {
  token: string
  id: number
}

function describe(v: unknown): string {
  if (v === null) return 'null'
  return typeof v === 'string' ? 'a string' : typeof v === 'object' ? 'an object' : typeof v
}

/** A Hugging Face tokenizer (tokenizer.json or a GGUF's embedded one) with its chat template. */
export class Tokenizer {
  /** @internal */
  constructor(private readonly inner: NativeTokenizer) {}

  /** A `tokenizer.json`, a checkpoint folder holding one (with `tokenizer_config.json`), or a `.gguf` file. */
  static async fromFile(path: string): Promise<Tokenizer> {
    if (typeof path !== 'string' || path.length === 0) throw new Error(`path: expected a tokenizer file path, found ${String(path)}`)
    return new Tokenizer(await native.loadTokenizer(path))
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== 'string') throw new Error(`text: expected a string, found ${typeof text}`)
    return this.inner.encode(text, opts.addSpecialTokens ?? true)
  }

  async encodeBatch(texts: string[], opts: { addSpecialTokens?: boolean } = {}): Promise<number[][]> {
    // napi's own message for a non-array is "Failed to get Array length", naming nothing.
    if (!Array.isArray(texts)) throw new Error(`texts: expected an array of strings, found ${describe(texts)}`)
    texts.forEach((s, i) => {
      if (typeof s !== 'string') throw new Error(`texts[${i}]: expected a string, found ${s === null ? 'null' : typeof s}`)
    })
    return this.inner.encodeBatch(texts, opts.addSpecialTokens ?? true)
  }

  decode(ids: ArrayLike<number>, opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.inner.decode(tokenIdList('ids', ids, this.vocabSize), opts.skipSpecialTokens ?? false)
  }

  tokenToId(token: string): number | null {
    return this.inner.tokenToId(token) ?? null
  }

  idToToken(id: number): string | null {
    return this.inner.idToToken(tokenIdArg('id', id, this.vocabSize)) ?? null
  }

  get vocabSize(): number {
    return this.inner.vocabSize
  }

  get bosToken(): SpecialToken | null {
    return this.inner.bosToken ?? null
  }

  get eosToken(): SpecialToken | null {
    return this.inner.eosToken ?? null
  }

  get padToken(): SpecialToken | null {
    return this.inner.padToken ?? null
  }

  get chatTemplate(): string | null {
    return this.inner.chatTemplate ?? null
  }

  /**
   * Renders messages with the model's chat template, as transformers' `apply_chat_template(tokenize=False)`.
   * Runs on the calling thread within a step and output-size budget; for long conversations use
   * `applyChatTemplateAsync`, which renders off the JS thread.
   */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    return this.inner.applyChatTemplate(...chatArgs(messages, opts))
  }

  /** As `applyChatTemplate`, rendered on the native thread pool so the event loop stays free. */
  applyChatTemplateAsync(messages: ChatMessage[], opts: ChatTemplateOptions = {}): Promise<string> {
    try {
      return this.inner.applyChatTemplateAsync(...chatArgs(messages, opts))
    } catch (e) {
      return Promise.reject(e)
    }
  }

  /** Decodes a stream of ids into text pieces, holding back characters split across tokens. */
  streamDecoder(opts: { skipSpecialTokens?: boolean } = {}): { step(id: number): string; finish(): string } {
    const d = this.inner.streamDecoder(opts.skipSpecialTokens ?? true)
    const vocab = this.vocabSize
    return { step: (id) => d.step(tokenIdArg('id', id, vocab)) ?? '', finish: () => d.finish() ?? '' }
  }

  dispose(): void {
    this.inner.dispose()
  }
}

function chatArgs(messages: ChatMessage[], opts: ChatTemplateOptions): [string, boolean, string | undefined] {
  if (!Array.isArray(messages)) throw new Error('messages: expected an array of { role, content } objects')
  messages.forEach((m, i) => {
    if (typeof m?.role !== 'string') throw new Error(`messages[${i}].role: expected a string, found ${typeof m?.role}`)
    if (typeof m.content !== 'string') throw new Error(`messages[${i}].content: expected a string, found ${typeof m.content}`)
  })
  const extra = opts.variables ? JSON.stringify(opts.variables) : undefined
  return [JSON.stringify(messages), opts.addGenerationPrompt ?? false, extra]
}
