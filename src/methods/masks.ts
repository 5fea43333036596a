// Sparse fine-tuning whose mask a training procedure rewrites (PEFT survey, Han et al. 2024,
// §3.2; issue 16): FAR, LT-SFT and Fish-Dip. Each trains a delta ΔW of every targeted weight
// under a 0/1 mask; the Trainer runs the procedure (docs/methods.md). All merge.
import { methodConfig, nonNegative, positiveInt, share, type PeftConfigOptions } from './config'

interface TargetOptions extends PeftConfigOptions {
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
}

/**
 * FAR (Vucetic et al. 2022): the FFN (gate/up/down) trains fully for `primingSteps` steps, then
 * only the `trainableRatio` of each layer's nodes with the largest L1 change keeps training.
 */
export interface FarConfigOptions extends TargetOptions {
  trainableRatio?: number
  primingSteps?: number
}

export class FarConfig extends methodConfig<FarConfigOptions, 'FAR'>('FAR', (options) => {
  share('trainableRatio', options.trainableRatio)
  positiveInt('primingSteps', options.primingSteps)
}) {}

/**
 * LT-SFT (Ansell et al. 2022): full fine-tuning for `fullSteps` steps, then the `density` share of
 * each weight that changed most is kept, the rest reset, and only it retrains.
 */
export interface LtSftConfigOptions extends TargetOptions {
  density?: number
  fullSteps?: number
}

export class LtSftConfig extends methodConfig<LtSftConfigOptions, 'LT_SFT'>('LT_SFT', (options) => {
  share('density', options.density)
  positiveInt('fullSteps', options.fullSteps)
}) {}

/**
 * Fish-Dip (Das et al. 2023): a sparse mask (`density` of each weight) recomputed every
 * `updateEvery` steps from the Fisher information of the training batches.
 */
export interface FishDipConfigOptions extends TargetOptions {
  density?: number
  updateEvery?: number
}

export class FishDipConfig extends methodConfig<FishDipConfigOptions, 'FISH_DIP'>('FISH_DIP', (options) => {
  share('density', options.density)
  positiveInt('updateEvery', options.updateEvery)
}) {}

/**
 * Structured diff pruning (Guo et al. 2021): a dense delta per targeted weight whose rows share a
 * hard-concrete gate (relaxed L0); training adds `l0Lambda` · the expected share of open rows to
 * the loss (`auxLosses.s_diff_pruning_l0`). Mergeable.
 */
export interface SDiffPruningConfigOptions extends TargetOptions {
  l0Lambda?: number
  initLogAlpha?: number
}

export class SDiffPruningConfig extends methodConfig<SDiffPruningConfigOptions, 'S_DIFF_PRUNING'>('S_DIFF_PRUNING', (options) => {
  nonNegative('l0Lambda', options.l0Lambda)
}) {}
