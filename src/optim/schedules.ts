// Learning-rate schedules as pure functions `(step) => multiplier` of the base lr, with the
// formulas of transformers' get_{constant,linear,cosine}_schedule_with_warmup (optimization.py).
// Step 0 is the first optimizer step, so with warmup the first step runs at lr 0, as there.
import { nonNegative, nonNegativeInt, options } from './validate'

export type Schedule = (step: number) => number

export interface WarmupOptions {
  /** Steps over which the multiplier rises linearly from 0 to 1. Default 0. */
  warmupSteps?: number
}

export interface DecayOptions extends WarmupOptions {
  /** Total training steps (transformers' num_training_steps). */
  totalSteps: number
}

export interface CosineOptions extends DecayOptions {
  /** Number of cosine waves over the decay; 0.5 (default) goes from 1 down to 0 once. */
  numCycles?: number
}

function checkStep(name: string, step: unknown): number {
  return nonNegative(`${name}: step`, step)
}

function warmup(name: string, o: Partial<WarmupOptions>): number {
  return nonNegativeInt(`${name}: warmupSteps`, o.warmupSteps ?? 0)
}

/** Linear warmup, then 1. */
export function constantSchedule(opts: WarmupOptions = {}): Schedule {
  const w = warmup('constantSchedule', options<WarmupOptions>('constantSchedule: options', opts))
  return (step) => {
    checkStep('constantSchedule', step)
    return step < w ? step / Math.max(1, w) : 1
  }
}

/** Linear warmup, then a linear decay to 0 at `totalSteps` (and 0 after). */
export function linearSchedule(opts: DecayOptions): Schedule {
  const o = options<DecayOptions>('linearSchedule: options', opts)
  const w = warmup('linearSchedule', o)
  const total = nonNegativeInt('linearSchedule: totalSteps', o.totalSteps)
  return (step) => {
    checkStep('linearSchedule', step)
    if (step < w) return step / Math.max(1, w)
    return Math.max(0, (total - step) / Math.max(1, total - w))
  }
}

/**
 * Linear warmup, then `0.5 * (1 + cos(pi * numCycles * 2 * progress))`. As in transformers the
 * curve is not clamped past `totalSteps` (with numCycles 0.5 it rises again), so stop there.
 */
export function cosineSchedule(opts: CosineOptions): Schedule {
  const o = options<CosineOptions>('cosineSchedule: options', opts)
  const w = warmup('cosineSchedule', o)
  const total = nonNegativeInt('cosineSchedule: totalSteps', o.totalSteps)
  const cycles = nonNegative('cosineSchedule: numCycles', o.numCycles ?? 0.5)
  return (step) => {
    checkStep('cosineSchedule', step)
    if (step < w) return step / Math.max(1, w)
    const progress = (step - w) / Math.max(1, total - w)
    return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)))
  }
}
