// LoRA improvements and mixtures of experts from the PEFT survey (Han et al. 2024, §3.3-3.4).
// Each is a `peft_type` of ours (docs/methods.md); the native core validates every field.
import { methodConfig, nonNegative, positiveInt, probability, share, type PeftConfigOptions } from './config'

interface TargetOptions extends PeftConfigOptions {
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
}

interface LowRankOptions extends TargetOptions {
  r?: number
  loraAlpha?: number
  loraDropout?: number
  /** true (default): the up-projections start at zero, so the adapter starts as the base model. */
  initWeights?: boolean
}

function checkLowRank(o: LowRankOptions): void {
  positiveInt('r', o.r)
  probability('loraDropout', o.loraDropout)
}

/** MoSLoRA (Wu et al. 2024): LoRA with a trainable r×r mixer between A and B, ΔW = s·B W A; mergeable. */
export type MoSLoraConfigOptions = LowRankOptions

export class MoSLoraConfig extends methodConfig<MoSLoraConfigOptions, 'MOSLORA'>('MOSLORA', (options) => {
  checkLowRank(options)
}) {}

/** MoLoRA (Zadouri et al. 2024): `numExperts` LoRA experts per linear, mixed per token by a softmax router. */
export interface MoLoraConfigOptions extends LowRankOptions {
  numExperts?: number
}

export class MoLoraConfig extends methodConfig<MoLoraConfigOptions, 'MOLORA'>('MOLORA', (options) => {
  checkLowRank(options)
  positiveInt('numExperts', options.numExperts)
}) {}

/** MoV (Zadouri et al. 2024): a softmax-routed mixture of (IA)³ vectors on k, v and the FFN activations. */
export interface MoVConfigOptions extends TargetOptions {
  numExperts?: number
  initWeights?: boolean
}

export class MoVConfig extends methodConfig<MoVConfigOptions, 'MOV'>('MOV', (options) => {
  positiveInt('numExperts', options.numExperts)
}) {}

/**
 * MixLoRA (Li et al. 2024): each FFN becomes `numExperts` experts (the frozen FFN plus LoRA on
 * its projections), `topK` of them routed per token. Training adds the load-balancing loss
 * (`routerAuxLossCoef`), reported as `mixlora_balance` in the Trainer's step metrics.
 */
export interface MixLoraConfigOptions extends PeftConfigOptions {
  r?: number
  loraAlpha?: number
  loraDropout?: number
  numExperts?: number
  topK?: number
  routerAuxLossCoef?: number
  routerInitRange?: number
  /** Which FFN projections carry expert LoRAs (default all three). */
  expertModules?: ('gate_proj' | 'up_proj' | 'down_proj')[]
  layersToTransform?: number[] | number
  initWeights?: boolean
}

export class MixLoraConfig extends methodConfig<MixLoraConfigOptions, 'MIXLORA'>('MIXLORA', (options) => {
  checkLowRank(options)
  positiveInt('numExperts', options.numExperts)
  positiveInt('topK', options.topK)
  if (options.topK !== undefined && options.numExperts !== undefined && options.topK > options.numExperts) {
    throw new Error(`topK: expected at most numExperts (${options.numExperts}), found ${options.topK}`)
  }
}) {}

/**
 * LoRA Dropout (Lin et al. 2024): LoRA whose A columns and B rows are dropped at rate
 * `paramDropout` in each training forward (a sparsity regulariser); plain LoRA in evaluation; mergeable.
 */
export interface LoraDropoutConfigOptions extends LowRankOptions {
  paramDropout?: number
}

export class LoraDropoutConfig extends methodConfig<LoraDropoutConfigOptions, 'LORA_DROPOUT'>('LORA_DROPOUT', (options) => {
  checkLowRank(options)
  probability('paramDropout', options.paramDropout)
}) {}

/**
 * SoRA (Ding et al. 2023): LoRA of rank r with a gate vector between A and B, made sparse by a
 * proximal L1 step (`sparseLambda`) after each optimizer step, which the Trainer runs; mergeable.
 */
export interface SoraConfigOptions extends LowRankOptions {
  sparseLambda?: number
}

export class SoraConfig extends methodConfig<SoraConfigOptions, 'SORA'>('SORA', (options) => {
  checkLowRank(options)
  nonNegative('sparseLambda', options.sparseLambda)
}) {}

/**
 * Child-tuning_D (Xu et al. 2021): a dense delta on each targeted weight whose gradient is masked
 * each training step to a random child network (share `childRatio`, scaled 1/childRatio); mergeable.
 * Child-tuning_F (a Fisher mask) is `SparseMaskConfig({ fisher })`.
 */
export interface ChildTuningConfigOptions extends TargetOptions {
  childRatio?: number
}

export class ChildTuningConfig extends methodConfig<ChildTuningConfigOptions, 'CHILD_TUNING'>('CHILD_TUNING', (options) => {
  share('childRatio', options.childRatio)
}) {}

/**
 * Compacter (Mahabadi et al. 2021): a serial bottleneck adapter whose projections are sums of
 * Kronecker products Σᵢ Aᵢ ⊗ (sᵢtᵢᵀ), the n×n Aᵢ shared by all layers (`phmDim` = n).
 */
export interface CompacterConfigOptions extends PeftConfigOptions {
  bottleneckSize?: number
  phmDim?: number
  phmRank?: number
  nonLinearity?: 'relu' | 'gelu' | 'silu' | 'tanh'
  scaling?: number
  sublayers?: ('self_attn' | 'mlp')[]
  layersToTransform?: number[] | number
  initWeights?: boolean
}

export class CompacterConfig extends methodConfig<CompacterConfigOptions, 'COMPACTER'>('COMPACTER', (options) => {
  positiveInt('bottleneckSize', options.bottleneckSize)
  positiveInt('phmDim', options.phmDim)
  positiveInt('phmRank', options.phmRank)
}) {}
