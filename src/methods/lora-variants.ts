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
