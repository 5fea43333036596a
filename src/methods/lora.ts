import { PeftConfig, positiveInt, probability, type PeftConfigOptions } from './config'

/** LoRA (Hu et al. 2021), with rsLoRA scaling, DoRA, and PEFT's inits and targeting rules. */
export interface LoraConfigOptions extends PeftConfigOptions {
  /** Rank (default 8). */
  r?: number
  /** Scaling numerator: alpha / r, or alpha / sqrt(r) with `useRslora` (default 8). */
  loraAlpha?: number
  loraDropout?: number
  /** Module names (exact or `.name` suffix), a full-match regex string, or "all-linear". */
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
  layersPattern?: string[] | string
  /** Per-module overrides: `{ "q_proj": 16 }` (PEFT's `(.*\.)?(pattern)$` match). */
  rankPattern?: Record<string, number>
  alphaPattern?: Record<string, number>
  useRslora?: boolean
  useDora?: boolean
  /** true (kaiming A, zero B), false, "gaussian" or "pissa". */
  initLoraWeights?: boolean | 'gaussian' | 'pissa'
  bias?: 'none'
}

export class LoraConfig extends PeftConfig {
  readonly peftType = 'LORA'

  constructor(options: LoraConfigOptions = {}) {
    super(options)
    positiveInt('r', options.r)
    probability('loraDropout', options.loraDropout)
    if (options.loraAlpha !== undefined && !(typeof options.loraAlpha === 'number' && Number.isFinite(options.loraAlpha))) {
      throw new Error(`loraAlpha: expected a number, found ${String(options.loraAlpha)}`)
    }
  }
}
