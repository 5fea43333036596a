// LoRA improvements from the PEFT survey (Han et al. 2024, §3.3; issue 16, part B). Each is a
// `peft_type` of ours (docs/methods.md); the native core validates every field.
import { PeftConfig, positiveInt, probability, type PeftConfigOptions } from './config'

interface LowRankOptions extends PeftConfigOptions {
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
  r?: number
  loraAlpha?: number
  loraDropout?: number
  /** true (default): B starts at zero, so the adapter starts as the base model. */
  initWeights?: boolean
}

/**
 * PeriodicLoRA (Meng et al. 2024): every `mergeEvery` optimizer steps the LoRA update is unloaded
 * into the adapter's merged weight and LoRA restarts (A redrawn, B = 0, fresh optimizer state),
 * so the stages add up beyond rank r. The Trainer runs the restarts; mergeable.
 */
export interface PeriodicLoraConfigOptions extends LowRankOptions {
  mergeEvery?: number
}

export class PeriodicLoraConfig extends PeftConfig {
  readonly peftType = 'PERIODIC_LORA'
  constructor(options: PeriodicLoraConfigOptions = {}) {
    super(options)
    positiveInt('r', options.r)
    probability('loraDropout', options.loraDropout)
    positiveInt('mergeEvery', options.mergeEvery)
  }
}

/**
 * Intrinsic SAID (Aghajanyan et al. 2021): every targeted weight moves by λᵢ·P(θ), θ ∈ ℝ^d one
 * vector shared by all of them (`intrinsicDim` = d), P a fixed Fastfood projection drawn from
 * `projectionSeed`, λᵢ one trained scale per weight. Mergeable.
 */
export interface IntrinsicSaidConfigOptions extends PeftConfigOptions {
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
  intrinsicDim?: number
  projectionSeed?: number
}

export class IntrinsicSaidConfig extends PeftConfig {
  readonly peftType = 'INTRINSIC_SAID'
  constructor(options: IntrinsicSaidConfigOptions = {}) {
    super(options)
    positiveInt('intrinsicDim', options.intrinsicDim)
  }
}
