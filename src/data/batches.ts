// Batches: the order of an epoch (seeded shuffle, length bucketing), and collation with right
// padding (attention mask 0, labels -100 on padding).
import { Rng, mixSeed } from './prng'
import { IGNORE, targetCount, type TokenizedExample } from './tokenize'

export interface Batch {
  inputIds: number[][]
  attentionMask: number[][]
  labels: number[][]
  /** Tokens the loss counts (the native loss is their mean). */
  targetTokens: number
  /** Non-padding tokens. */
  tokens: number
  /** Packed rows only: positions restart at 0 for every example. */
  positionIds?: number[][]
  /** Packed rows only: 1, 2, ... per example in the row, 0 on padding. */
  segmentIds?: number[][]
}

export interface EpochPlanOptions {
  batchSize: number
  seed?: number
  /** Shuffle every epoch (default true); the order depends only on (seed, epoch). */
  shuffle?: boolean
  /** Group examples of similar length into a batch, to pad less (default true). */
  lengthBucketing?: boolean
  /** Bucketing sorts windows of this many batches by length (default 16). */
  bucketWindow?: number
}

export function checkBatchSize(batchSize: unknown): number {
  if (!Number.isInteger(batchSize) || (batchSize as number) < 1) throw new Error(`batchSize: expected an integer >= 1, found ${String(batchSize)}`)
  return batchSize as number
}

/** The batches (as example indices) of epoch `epoch`. Deterministic in (lengths, options, epoch). */
export function planEpoch(lengths: number[], epoch: number, o: EpochPlanOptions): number[][] {
  const bs = checkBatchSize(o.batchSize)
  const shuffle = o.shuffle ?? true
  const rng = new Rng(mixSeed(o.seed ?? 0, epoch))
  const order = lengths.map((_, i) => i)
  if (shuffle) rng.shuffle(order)
  const batches: number[][] = []
  if (o.lengthBucketing ?? true) {
    const window = bs * (o.bucketWindow ?? 16)
    for (let s = 0; s < order.length; s += window) {
      const w = order.slice(s, s + window).sort((a, b) => lengths[a] - lengths[b] || a - b)
      for (let i = 0; i < w.length; i += bs) batches.push(w.slice(i, i + bs))
    }
    if (shuffle) rng.shuffle(batches)
  } else {
    for (let i = 0; i < order.length; i += bs) batches.push(order.slice(i, i + bs))
  }
  return batches
}

/** Right-pads examples into one batch. */
export function collate(examples: TokenizedExample[], padId: number): Batch {
  if (examples.length === 0) throw new Error('collate: expected at least one example')
  const len = Math.max(...examples.map((e) => e.inputIds.length))
  const pad = (row: number[], v: number) => row.concat(new Array<number>(len - row.length).fill(v))
  return {
    inputIds: examples.map((e) => pad(e.inputIds, padId)),
    attentionMask: examples.map((e) => pad(e.inputIds.map(() => 1), 0)),
    labels: examples.map((e) => pad(e.labels, IGNORE)),
    targetTokens: examples.reduce((n, e) => n + targetCount(e.labels), 0),
    tokens: examples.reduce((n, e) => n + e.inputIds.length, 0),
  }
}
