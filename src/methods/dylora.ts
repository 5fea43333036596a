import { PeftConfig, positiveInt, probability, type PeftConfigOptions } from './config'

/**
 * DyLoRA (Valipour et al., EACL 2023): LoRA trained at nested ranks. Each training forward
 * samples one rank b in [rMin, r] for the whole model (from the forward's seed: with gradient
 * accumulation each micro-batch draws its own, where the paper draws one per step) and runs W x + (alpha / b) B[:, :b] A[:b, :] x,
 * so that after training any rank in [rMin, r] works without retraining. Outside training
 * (evaluation, generation, merging) the adapter runs at `evalRank`; change it afterwards
 * with `peft.setDyLoraRank(rank)`. Files use PEFT's LoRA keys with peft_type "DYLORA" (ours).
 */
export interface DyLoraConfigOptions extends PeftConfigOptions {
  /** The largest rank (default 8). */
  r?: number
  /** The smallest rank sampled (default 1). */
  rMin?: number
  /** The rank used outside training, in [rMin, r] (default r). */
  evalRank?: number
  /**
   * "frozen" (the paper's default, Algorithm 1): a step updates only row/column b, the
   * lower ranks enter detached; "all": every row/column up to b is updated.
   */
  updateMode?: 'frozen' | 'all'
  /** Scaling numerator: the update at rank b is scaled by loraAlpha / b (default 8). */
  loraAlpha?: number
  loraDropout?: number
  /** Module names (exact or `.name` suffix), a full-match regex string, or "all-linear". */
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
  /** true (default): kaiming-uniform A, zero B, as LoRA; false: both kaiming-uniform. */
  initLoraWeights?: boolean
}

export class DyLoraConfig extends PeftConfig {
  readonly peftType = 'DYLORA'

  constructor(options: DyLoraConfigOptions = {}) {
    super(options)
    positiveInt('r', options.r)
    positiveInt('rMin', options.rMin)
    positiveInt('evalRank', options.evalRank)
    probability('loraDropout', options.loraDropout)
    const r = options.r ?? 8
    const rMin = options.rMin ?? 1
    if (rMin > r) throw new Error(`rMin: expected an integer at most r = ${r}, found ${rMin}`)
    if (options.evalRank !== undefined && (options.evalRank < rMin || options.evalRank > r)) {
      throw new Error(`evalRank: expected an integer in [rMin, r] = [${rMin}, ${r}], found ${options.evalRank}`)
    }
    if (options.updateMode !== undefined && options.updateMode !== 'frozen' && options.updateMode !== 'all') {
      throw new Error(`updateMode: expected "frozen" or "all", found ${String(options.updateMode)}`)
    }
  }
}
