// Generation options, and the async iterator over streamed tokens.
import { native, type NativeModel } from './native'
import { adapterNameList, intArg, seedArg, tokenIdList } from './inputs'
import { PeftWarning } from './warnings'

export interface GenerateOptions {
  /** New tokens to produce at most (default 128). */
  maxNewTokens?: number
  doSample?: boolean
  temperature?: number
  topK?: number
  topP?: number
  /** Seed for sampling; the same seed gives the same tokens. */
  seed?: number
  /**
   * Stop a row when one of these is produced. Default: the model's EOS tokens. `generate` keeps
   * the stop token in its output (as transformers does); `stream` does not yield it unless
   * `includeStopToken` is set.
   */
  stopTokenIds?: number[]
  /** `stream` only: also yield the stop token that ended generation (default false: stop tokens are not text). */
  includeStopToken?: boolean
  /** Stops generation after the current token; already aborted: rejects with its reason (an AbortError) before any work. */
  signal?: AbortSignal
  /** Mixed batch (PEFT's `adapter_names`): the adapter of each prompt, "__base__" for none. */
  adapterNames?: string[]
}

type NativeArgs = Parameters<NativeModel['generate']>[1]

/** `vocab`: the model's vocab_size, which bounds the stop tokens. */
export function generationArgs(o: GenerateOptions, defaultStops: number[], vocab?: number): NativeArgs {
  const maxNewTokens = intArg('maxNewTokens', o.maxNewTokens ?? 128)
  const temperature = o.temperature ?? 1
  if (!(temperature > 0)) throw new Error(`temperature: expected a number > 0, found ${temperature}`)
  const topK = intArg('topK', o.topK ?? 0, 0, undefined, '(0 = off)')
  const topP = o.topP ?? 1
  if (!(topP > 0 && topP <= 1)) throw new Error(`topP: expected a number in (0, 1], found ${topP}`)
  const seed = seedArg('seed', o.seed ?? Math.floor(Math.random() * 2 ** 31))
  const stops = tokenIdList('stopTokenIds', o.stopTokenIds ?? defaultStops, vocab, () => '')
  return { maxNewTokens, doSample: o.doSample ?? false, temperature, topK, topP, seed, stopTokenIds: stops, adapterNames: adapterNameList(o.adapterNames) }
}

/**
 * Keeps generation inside the model's context (`max_position_embeddings`): a longer prompt is
 * an error; `maxNewTokens` past the end is capped, with a warning that says so (transformers
 * warns the same way). Returns the args to use.
 */
export function fitContext(prompts: number[][], args: NativeArgs, context: number): NativeArgs {
  const longest = Math.max(...prompts.map((p) => p.length))
  if (longest > context) {
    throw new Error(`ids: the prompt is ${longest} tokens, longer than the model's context length of ${context} tokens (max_position_embeddings); shorten it`)
  }
  if (longest + args.maxNewTokens <= context) return args
  const room = context - longest
  const message = `${args.maxNewTokens} new tokens after a ${longest}-token prompt would run past the model's context length of ${context} tokens (max_position_embeddings); generating at most ${room} new tokens`
  process.emitWarning(new PeftWarning('context_length', 'maxNewTokens', message))
  return { ...args, maxNewTokens: room }
}

export function abortHandle(signal?: AbortSignal): InstanceType<typeof native.NativeAbort> | undefined {
  if (!signal) return undefined
  const h = new native.NativeAbort()
  if (signal.aborted) h.abort()
  else signal.addEventListener('abort', () => h.abort(), { once: true })
  return h
}

/** Turns a callback-driven native generation into an async iterator of per-step rows. */
export async function* streamSteps(
  run: (onStep: (row: number[]) => void, abort: InstanceType<typeof native.NativeAbort>) => Promise<unknown>,
  signal?: AbortSignal,
): AsyncGenerator<number[]> {
  const abort = abortHandle(signal) ?? new native.NativeAbort()
  const queue: number[][] = []
  let wake: (() => void) | null = null
  let finished = false
  let failure: unknown = null
  const done = run(
    (row) => {
      // Runs on the JS thread from a native callback: it must never throw.
      queue.push(row)
      wake?.()
    },
    abort,
  ).then(
    () => {
      finished = true
      wake?.()
    },
    (e) => {
      failure = e
      finished = true
      wake?.()
    },
  )
  try {
    while (true) {
      if (queue.length > 0) {
        yield queue.shift()!
        continue
      }
      if (finished) break
      await new Promise<void>((r) => (wake = r))
      wake = null
    }
    if (failure) throw failure
  } finally {
    abort.abort()
    await done
  }
}
