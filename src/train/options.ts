// The trainer's options, with defaults and checks that name the option at fault.
import type { TokenizedDataset } from '../data/dataset'
import type { TokenizedExample } from '../data/tokenize'
import type { Optimizer } from '../optim/optimizer'
import type { Parameter } from '../parameter'

export type ExamplesLike = TokenizedDataset | TokenizedExample[]

export interface TrainerOptions {
  train: ExamplesLike
  valid?: ExamplesLike | null
  /** Folder for checkpoints/, metrics.jsonl, the final adapter and loss.svg. Without it nothing is written. */
  output?: string
  /** Passes over the training data (default 1 when maxSteps is not given). */
  epochs?: number
  /** Optimizer steps; with epochs too, whichever comes first. */
  maxSteps?: number
  /** Examples per micro-batch (default 4). */
  batchSize?: number
  /** Micro-batches per optimizer step (default 1); the loss is normalised over all their target tokens. */
  gradientAccumulationSteps?: number
  learningRate?: number
  weightDecay?: number
  lrSchedule?: 'constant' | 'linear' | 'cosine'
  warmupSteps?: number
  /** Clip the global gradient norm to this (default 1; 0 or Infinity: never). */
  maxGradNorm?: number
  /** Evaluate every N steps (default 0: only at the end, when there is a validation set). */
  evalEvery?: number
  /** Evaluate on at most this many batches (default: all). */
  evalBatches?: number
  /** Save a checkpoint every N steps (default 0: only at the end). Needs `output`. */
  saveEvery?: number
  /** Keep the last K checkpoints (default 2). */
  saveTotalLimit?: number
  /** Seeds data order and dropout (default 0). */
  seed?: number
  shuffle?: boolean
  lengthBucketing?: boolean
  /** Pack short examples into rows of `maxSeqLength` tokens; no example attends to another. */
  packing?: boolean
  maxSeqLength?: number
  /** Stop after the current step, save a checkpoint and end. Aborted before train(): it rejects with the signal's reason, having done nothing. */
  signal?: AbortSignal
  /** A checkpoint folder, or an output / checkpoints folder (its newest complete checkpoint). */
  resumeFromCheckpoint?: string
  /** Builds the optimizer (default AdamW with learningRate and weightDecay). */
  optimizer?: (params: [string, Parameter][]) => Optimizer<{ lr: number }, unknown>
  padTokenId?: number
  /** transformers' `gradient_checkpointing`: recompute each decoder layer in the backward (less memory, ~1 more forward of compute). Default false. */
  gradientCheckpointing?: boolean
  /** Refuse to start when the planned step (src/plan/, docs/memory.md) exceeds the available memory. Default true. */
  memoryCheck?: boolean
}

export type ResolvedOptions = Required<Omit<TrainerOptions, 'valid' | 'output' | 'epochs' | 'maxSteps' | 'signal' | 'resumeFromCheckpoint' | 'optimizer' | 'padTokenId' | 'evalBatches' | 'maxSeqLength'>> &
  Pick<TrainerOptions, 'output' | 'signal' | 'resumeFromCheckpoint' | 'optimizer' | 'evalBatches' | 'maxSeqLength'> & {
    trainExamples: TokenizedExample[]
    validExamples: TokenizedExample[] | null
    epochs: number | null
    maxSteps: number | null
    padTokenId: number
  }

function int(name: string, v: unknown, min: number): number {
  if (!Number.isInteger(v) || (v as number) < min) throw new Error(`${name}: expected an integer >= ${min}, found ${String(v)}`)
  return v as number
}

function num(name: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || Number.isNaN(v) || v < min) throw new Error(`${name}: expected a number >= ${min}, found ${String(v)}`)
  return v
}

export function examplesOf(name: string, x: ExamplesLike | null | undefined): TokenizedExample[] | null {
  if (x == null) return null
  const list = Array.isArray(x) ? x : x.examples
  if (!Array.isArray(list)) throw new Error(`${name}: expected a dataset from loadData() or tokenized examples`)
  if (list.length === 0) throw new Error(`${name}: the dataset is empty`)
  return list
}

export function resolveOptions(o: TrainerOptions, defaultPad: number): ResolvedOptions {
  if (typeof o !== 'object' || o === null) throw new Error('Trainer: expected an options object')
  const trainExamples = examplesOf('train', o.train)
  if (!trainExamples) throw new Error('train: the training data is missing')
  const r: ResolvedOptions = {
    ...o,
    train: o.train,
    trainExamples,
    validExamples: examplesOf('valid', o.valid),
    epochs: o.epochs === undefined ? (o.maxSteps === undefined ? 1 : null) : int('epochs', o.epochs, 1),
    maxSteps: o.maxSteps === undefined ? null : int('maxSteps', o.maxSteps, 1),
    batchSize: int('batchSize', o.batchSize ?? 4, 1),
    gradientAccumulationSteps: int('gradientAccumulationSteps', o.gradientAccumulationSteps ?? 1, 1),
    learningRate: num('learningRate', o.learningRate ?? 2e-4, 0),
    weightDecay: num('weightDecay', o.weightDecay ?? 0, 0),
    lrSchedule: o.lrSchedule ?? 'linear',
    warmupSteps: int('warmupSteps', o.warmupSteps ?? 0, 0),
    maxGradNorm: num('maxGradNorm', o.maxGradNorm ?? 1, 0),
    evalEvery: int('evalEvery', o.evalEvery ?? 0, 0),
    saveEvery: int('saveEvery', o.saveEvery ?? 0, 0),
    saveTotalLimit: int('saveTotalLimit', o.saveTotalLimit ?? 2, 1),
    seed: int('seed', o.seed ?? 0, 0),
    shuffle: o.shuffle ?? true,
    lengthBucketing: o.lengthBucketing ?? true,
    packing: o.packing ?? false,
    gradientCheckpointing: o.gradientCheckpointing ?? false,
    memoryCheck: o.memoryCheck ?? true,
    padTokenId: int('padTokenId', o.padTokenId ?? defaultPad, 0),
  }
  if (!['constant', 'linear', 'cosine'].includes(r.lrSchedule)) throw new Error(`lrSchedule: expected "constant", "linear" or "cosine", found ${String(r.lrSchedule)}`)
  if (r.evalBatches !== undefined) int('evalBatches', r.evalBatches, 1)
  if (r.evalEvery > 0 && !r.validExamples) throw new Error('evalEvery: evaluation needs a validation set (pass `valid`, or `validSplit` to loadData)')
  if (r.saveEvery > 0 && !r.output) throw new Error('saveEvery: checkpoints need an `output` folder')
  if (r.signal !== undefined && !(r.signal instanceof AbortSignal)) throw new Error('signal: expected an AbortSignal')
  if (typeof r.gradientCheckpointing !== 'boolean') throw new Error(`gradientCheckpointing: expected a boolean, found ${String(r.gradientCheckpointing)}`)
  if (typeof r.memoryCheck !== 'boolean') throw new Error(`memoryCheck: expected a boolean, found ${String(r.memoryCheck)}`)
  if (r.packing && !r.maxSeqLength) throw new Error('packing: needs `maxSeqLength` (the length of a packed row)')
  return r
}
