// Loading a dataset: a JSONL file, a folder with train.jsonl (and valid.jsonl), or arrays of
// records from TypeScript; tokenized once, with an optional validation split.
import { existsSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { locateArray, readJsonl, type Located } from './jsonl'
import { parseExample, type ExampleInput } from './examples'
import { Rng, mixSeed } from './prng'
import { resolveTokenizeOptions, tokenizeExampleAsync, type TextTokenizer, type TokenizeOptions, type TokenizedExample } from './tokenize'

export type DataSource = string | ExampleInput[] | { train: string | ExampleInput[]; valid?: string | ExampleInput[] }

export interface DataOptions extends TokenizeOptions {
  /** Without a validation set, hold out this fraction (< 1) or count (>= 1) of train (default 0). */
  validSplit?: number
  /** Seeds the validation split (default 0). */
  seed?: number
}

export interface TokenizedDataset {
  /** Where it came from: a file path or "data". */
  name: string
  examples: TokenizedExample[]
}

export interface LoadedData {
  train: TokenizedDataset
  valid: TokenizedDataset | null
  /** Examples dropped by truncation, and similar notes. */
  warnings: string[]
}

function records(src: string | ExampleInput[], name: string): { name: string; items: Located[] } {
  if (typeof src === 'string') return { name: src, items: readJsonl(src) }
  if (!Array.isArray(src)) throw new Error(`${name}: expected a JSONL path or an array of records, found ${src === null ? 'null' : typeof src}`)
  return { name, items: locateArray(src, name) }
}

function sources(source: DataSource): { train: string | ExampleInput[]; valid?: string | ExampleInput[] } {
  if (typeof source === 'string') {
    if (!existsSync(source)) throw new Error(`${source}: no such data file or folder`)
    if (!statSync(source).isDirectory()) return { train: source }
    const train = join(source, 'train.jsonl')
    const valid = join(source, 'valid.jsonl')
    if (!existsSync(train)) throw new Error(`${source}: a data folder needs a train.jsonl (and optionally valid.jsonl)`)
    return existsSync(valid) ? { train, valid } : { train }
  }
  if (Array.isArray(source)) return { train: source }
  if (source && typeof source === 'object' && 'train' in source) return source
  throw new Error('data: expected a JSONL path, a folder with train.jsonl/valid.jsonl, an array of records, or { train, valid }')
}

async function tokenizeAll(tok: TextTokenizer, src: string | ExampleInput[], name: string, opts: DataOptions, warnings: string[]): Promise<TokenizedDataset> {
  const o = resolveTokenizeOptions(opts)
  const r = records(src, name)
  if (r.items.length === 0) throw new Error(`${r.name}: the dataset is empty`)
  const examples: TokenizedExample[] = []
  for (let i = 0; i < r.items.length; i++) {
    const ex = await tokenizeExampleAsync(tok, parseExample(r.items[i]), o, warnings)
    if (ex) examples.push(ex)
    if (i % 256 === 255) await new Promise((res) => setImmediate(res)) // keep the event loop ticking
  }
  if (examples.length === 0) throw new Error(`${r.name}: no example is left after truncation to ${o.maxSeqLength} tokens`)
  return { name: r.name, examples }
}

/** Reads, checks and tokenizes training (and validation) data. Errors name the file and line. */
export async function loadData(source: DataSource, tokenizer: TextTokenizer | null, opts: DataOptions = {}): Promise<LoadedData> {
  if (!tokenizer) throw new Error('data: the model has no tokenizer (tokenizer.json or GGUF metadata), so text data cannot be encoded')
  const s = sources(source)
  const warnings: string[] = []
  const train = await tokenizeAll(tokenizer, s.train, 'train', opts, warnings)
  let valid = s.valid !== undefined ? await tokenizeAll(tokenizer, s.valid, 'valid', opts, warnings) : null
  const split = opts.validSplit ?? 0
  if (!valid && split > 0) {
    const n = split < 1 ? Math.round(train.examples.length * split) : Math.floor(split)
    if (n < 1 || n >= train.examples.length) {
      throw new Error(`validSplit: ${split} of ${train.examples.length} examples leaves ${n < 1 ? 'no validation' : 'no training'} example`)
    }
    const order = new Rng(mixSeed(opts.seed ?? 0, 0x5a11d)).shuffle(train.examples.map((_, i) => i))
    const held = new Set(order.slice(0, n))
    valid = { name: `${train.name} (split)`, examples: train.examples.filter((_, i) => held.has(i)) }
    train.examples = train.examples.filter((_, i) => !held.has(i))
  }
  return { train, valid, warnings }
}
