// What the methods' rules between optimizer steps take and report (`PeftModel.afterStep` and
// `beforeStep`; the rules themselves are in the core, crates/peft-core/src/state/steps.rs).
import type { NativeStepContext, NativeStepReport } from '../index'
import { seedArg } from './inputs'

/** `afterStep`'s argument. */
export interface StepContext {
  /** The optimizer step just taken, 0-based (PEFT's `global_step`). */
  step: number
  /** That step's learning rate (SoRA thresholds its gates by lr · sparseLambda). */
  lr: number
  /** Seeds what a procedure draws (PeriodicLoRA's restarted factors); default 0. */
  seed?: number
}

/** One adapter's entries a procedure kept (SoRA: gates; FAR: FFN nodes; LT-SFT, Fish-Dip: weight entries), and in all. */
export interface KeptCount { adapter: string; kept: number; total: number }

/** What the methods' rules did at one step (`afterStep`, `beforeStep`); empty where none was due. */
export interface StepReport {
  /** AdaLoRA: the rank budget its allocation applied, or null when the schedule made none. */
  adaloraBudget: number | null
  /** SoRA: per adapter, the gates still non-zero after the proximal step (the kept rank). */
  soraRanks: KeptCount[]
  /** PeriodicLoRA: per adapter restarted, the stage that ended (1-based). */
  periodicStages: { adapter: string; stage: number }[]
  /** Parameters a rule redrew (PeriodicLoRA's factors): reset their optimizer state (`opt.resetState`). */
  resetState: string[]
  /** FAR, LT-SFT, Fish-Dip: per adapter, its mask where a rule rewrote it (entries or FFN nodes kept, and in all). */
  maskUpdates: KeptCount[]
}

/** @internal */
export function stepReport(r: NativeStepReport): StepReport {
  return { adaloraBudget: r.adaloraBudget ?? null, soraRanks: r.soraRanks, periodicStages: r.periodicStages, resetState: r.resetState, maskUpdates: r.maskUpdates }
}

/** @internal `ctx` checked, as the native `afterStep` takes it. */
export function nativeStepContext(ctx: StepContext): NativeStepContext {
  if (!Number.isSafeInteger(ctx?.step) || ctx.step < 0) throw new Error(`afterStep: step: expected an integer >= 0, found ${ctx?.step}`)
  if (!(Number.isFinite(ctx.lr) && ctx.lr >= 0)) throw new Error(`afterStep: lr: expected a finite number >= 0, found ${ctx.lr}`)
  return { step: ctx.step, lr: ctx.lr, seed: seedArg('afterStep: seed', ctx.seed ?? 0) }
}
