// llama.cpp as an oracle for our forward pass: node-llama-cpp 3.21.1 (a devDependency) on its
// prebuilt CPU binary, never built or downloaded at test time. Both sides get the same token ids
// (never text), and llama.cpp's teacher-forced greedy next token at every position is compared
// with the argmax of our logits.
import type { ExecutionContext, SkipFn, TestFn } from 'ava'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { ChatMessage, ForwardInput, ForwardOutput, LlamaModel } from '../../src'

type NodeLlamaCpp = typeof import('node-llama-cpp')
// llama.cpp's ids are branded numbers; ours are plain ones.
type Token = import('node-llama-cpp').Token

export const MODELS = join(__dirname, '..', '..', '.cache', 'models')
export const SMOLLM2_GGUF = join(MODELS, 'SmolLM2-135M-Instruct.Q4_1.gguf')
export const GEMMA3_GGUF = join(MODELS, 'gemma-3-270m-q4_k_m.gguf')

export interface LoraAdapter {
  filePath: string
  /** llama.cpp's user scale (default 1); the file's `adapter.lora.alpha` / rank multiplies it. */
  scale?: number
}

export interface OracleOptions {
  /** llama.cpp LoRA adapter GGUFs, applied on top of the base (`general.type = "adapter"`). */
  loras?: (string | LoraAdapter)[]
  /** The longest sequence that fits (default 1024); longer ones are refused, never context-shifted. */
  contextSize?: number
  threads?: number
}

export interface LlamaCppOracle {
  /** As llama.cpp tokenizes for evaluation: BOS when the GGUF asks for it, special tokens parsed in the text. */
  tokenize(text: string): number[]
  /** `out[j]` = llama.cpp's greedy next token after `ids[0..j]`. */
  argmax(ids: number[]): Promise<number[]>
  detokenize(ids: number[]): string
}

// node-llama-cpp is ESM-only and the specs run as CommonJS, so it comes in through import().
function loadNodeLlamaCpp(): Promise<NodeLlamaCpp> {
  return import('node-llama-cpp')
}

/** Loads the GGUF (and adapters) in llama.cpp, runs `fn`, then disposes context, model and llama. */
export async function withLlamaCpp<T>(gguf: string, opts: OracleOptions, fn: (oracle: LlamaCppOracle) => Promise<T>): Promise<T> {
  const { getLlama, LlamaLogLevel } = await loadNodeLlamaCpp()
  // gpu: false and build: 'never' = the prebuilt CPU binary or an error; nothing is compiled or fetched.
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error })
  try {
    const model = await llama.loadModel({ modelPath: gguf })
    try {
      const contextSize = opts.contextSize ?? 1024
      const adapters = (opts.loras ?? []).map((a) => (typeof a === 'string' ? { filePath: a } : a))
      const context = await model.createContext({
        contextSize,
        threads: opts.threads ?? 2,
        ...(adapters.length > 0 ? { lora: { adapters } } : {}),
      })
      try {
        const sequence = context.getSequence()
        const oracle: LlamaCppOracle = {
          tokenize(text) {
            // model.tokenize() never adds BOS (llama.cpp's add_special is off); its second
            // argument only parses special-token text such as <|im_start|>.
            const bos = model.tokens.shouldPrependBosToken ? model.tokens.bos : null
            return [...(bos != null ? [bos] : []), ...model.tokenize(text, true)]
          },
          async argmax(ids) {
            if (ids.length === 0 || ids.length > context.contextSize) {
              throw new Error(`llama.cpp oracle: expected 1..${context.contextSize} ids, found ${ids.length} (raise contextSize)`)
            }
            await sequence.clearHistory()
            // temperature 0 (the default) = llama.cpp's greedy sampler, no penalties: the plain argmax.
            const out = await sequence.controlledEvaluate(ids.map((id): [Token, { generateNext: { token: true } }] => [id as Token, { generateNext: { token: true } }]))
            return ids.map((_, j) => {
              const next = out[j]?.next.token
              if (next == null) throw new Error(`llama.cpp oracle: no next token at position ${j} of ${ids.length}`)
              return next
            })
          },
          detokenize: (ids) => model.detokenize(ids as Token[], true),
        }
        return await fn(oracle)
      } finally {
        await context.dispose()
      }
    } finally {
      await model.dispose()
    }
  } finally {
    await llama.dispose()
  }
}

/** llama.cpp's teacher-forced argmax at every position of every sequence. */
export function llamaCppArgmax(gguf: string, sequences: number[][], opts: OracleOptions = {}): Promise<number[][]> {
  return withLlamaCpp(gguf, opts, async (oracle) => {
    const out: number[][] = []
    for (const ids of sequences) out.push(await oracle.argmax(ids))
    return out
  })
}

/** A prompt: plain text, or messages rendered with the GGUF's chat template (with the answer, so every position is teacher-forced). */
export type OraclePrompt = { name: string; text: string } | { name: string; messages: ChatMessage[] }

/** Plain text and chat turns, 30–60 tokens each with SmolLM2's tokenizer. */
export const CHAT_PROMPTS: OraclePrompt[] = [
  { name: 'prose', text: 'The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.' },
  { name: 'code', text: 'def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nfor i in range(10):\n    print(i, fibonacci(i))\n' },
  {
    name: 'chat: capital',
    messages: [
      { role: 'user', content: 'What is the capital of France?' },
      { role: 'assistant', content: 'The capital of France is Paris. It is also the largest city in the country.' },
    ],
  },
  {
    name: 'chat: tips',
    messages: [
      { role: 'user', content: 'Give me three tips for staying healthy.' },
      { role: 'assistant', content: '1. Eat a balanced diet. 2. Exercise regularly. 3. Get enough sleep.' },
    ],
  },
]

/** Gemma 3 270M base has no chat template in its GGUF: its turn markup is written out. */
export const GEMMA3_PROMPTS: OraclePrompt[] = [
  CHAT_PROMPTS[0],
  CHAT_PROMPTS[1],
  { name: 'turns: capital', text: '<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nThe capital of France is Paris. It is also the largest city in the country.<end_of_turn>\n' },
  { name: 'list', text: 'Three tips for staying healthy:\n1. Eat a balanced diet with plenty of vegetables.\n2. Exercise regularly.\n3. Get enough sleep.\n' },
]

/** Our side; a PeftModel fits too (same forward). */
export interface Forwardable {
  forward(input: ForwardInput): Promise<ForwardOutput>
}

export interface CompareOptions extends OracleOptions {
  /** Fraction of positions whose argmax must agree (default 0.95). */
  minAgreement?: number
  /** Wraps our loaded base (e.g. attaches the adapter matching `loras`); default: the base itself. */
  attach?: (model: LlamaModel) => Promise<Forwardable>
}

/**
 * Loads `gguf` with `AutoModelForCausalLM.fromPretrained` and in llama.cpp, encodes every prompt with our
 * tokenizer, and asserts that our argmax equals llama.cpp's on at least `minAgreement` of all
 * positions. Logs the agreement per prompt, the disagreements (with our logit gap: small = a
 * near tie), and whether llama.cpp's own tokenizer gives the same ids. Returns the overall fraction.
 */
export async function compareWithLlamaCpp(t: ExecutionContext, gguf: string, prompts: OraclePrompt[], opts: CompareOptions = {}): Promise<number> {
  const { AutoModelForCausalLM } = await import('../../src')
  const start = Date.now()
  const base = await AutoModelForCausalLM.fromPretrained(gguf)
  try {
    const tok = base.tokenizer
    if (!tok) throw new Error(`${gguf}: our loader found no tokenizer`)
    const ours: Forwardable = opts.attach ? await opts.attach(base) : base
    const texts = prompts.map((p) => ('text' in p ? p.text : tok.applyChatTemplate(p.messages)))
    const ids = texts.map((text) => tok.encode(text))
    const theirs = await withLlamaCpp(gguf, opts, async (oracle) => {
      texts.forEach((text, i) => {
        const same = JSON.stringify(oracle.tokenize(text)) === JSON.stringify(ids[i])
        t.log(`${prompts[i].name}: ${ids[i].length} ids; llama.cpp's tokenizer ${same ? 'gives the same ids' : 'differs (ours are used on both sides)'}`)
      })
      const out: number[][] = []
      for (const row of ids) out.push(await oracle.argmax(row))
      return out
    })
    let agree = 0
    let total = 0
    for (const [i, row] of ids.entries()) {
      const { logits } = await ours.forward({ inputIds: [row] })
      const vocab = logits.shape[2]
      const data = await logits.toFloat32Array()
      logits.dispose()
      let rowAgree = 0
      const misses: string[] = []
      row.forEach((_, j) => {
        const at = data.subarray(j * vocab, (j + 1) * vocab)
        const mine = argmax(at)
        const their = theirs[i][j]
        if (mine === their) rowAgree++
        else misses.push(`@${j} ${JSON.stringify(tok.decode([mine]))} vs ${JSON.stringify(tok.decode([their]))} (gap ${(at[mine] - (at[their] ?? NaN)).toFixed(3)})`)
      })
      t.log(`${prompts[i].name}: ${rowAgree}/${row.length} agree${misses.length ? `; ours vs llama.cpp: ${misses.join(', ')}` : ''}`)
      agree += rowAgree
      total += row.length
    }
    const ratio = agree / total
    const min = opts.minAgreement ?? 0.95
    t.log(`argmax agreement with llama.cpp: ${agree}/${total} = ${(100 * ratio).toFixed(1)}% (need ${(100 * min).toFixed(0)}%), ${Date.now() - start} ms`)
    t.true(ratio >= min, `argmax agreement ${(100 * ratio).toFixed(1)}% < ${(100 * min).toFixed(0)}%`)
    return ratio
  } finally {
    base.dispose()
  }
}

/**
 * Gemma 3 270M (npm run fetch:gemma3) against llama.cpp. Once our model layer loads gemma3, its
 * spec is one line:
 *   ifModelPresent(test, GEMMA3_GGUF, 'gemma3.spec.ts', 'fetch:gemma3')('Gemma 3 agrees with llama.cpp', (t) => checkGemma3(t))
 */
export function checkGemma3(t: ExecutionContext, opts: CompareOptions = {}): Promise<number> {
  return compareWithLlamaCpp(t, GEMMA3_GGUF, GEMMA3_PROMPTS, opts)
}

/** ava's `test`, or `test.skip` after printing why, when a fetched model is absent. */
export function ifModelPresent(test: TestFn, gguf: string, spec: string, fetchScript: string): TestFn | SkipFn {
  if (existsSync(gguf)) return test
  console.log(`SKIPPED ${spec}: ${gguf} is absent (run \`npm run ${fetchScript}\`)`)
  return test.skip
}

function argmax(xs: Float32Array): number {
  let best = 0
  for (let k = 1; k < xs.length; k++) if (xs[k] > xs[best]) best = k
  return best
}
