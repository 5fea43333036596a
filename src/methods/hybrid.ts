import { PeftConfig, positiveInt, type PeftConfigOptions } from './config'

/** The prefix part shared by both hybrids (as `PrefixTuningConfig`). */
interface HybridPrefixOptions extends PeftConfigOptions {
  /** Prefix length (> 0). */
  numVirtualTokens?: number
  /** Reparameterise the prefixes through an MLP while training. */
  prefixProjection?: boolean
  encoderHiddenSize?: number
  /** Bottleneck width of the adapter (> 0). */
  bottleneckSize?: number
  nonLinearity?: 'relu' | 'gelu' | 'silu' | 'tanh'
  /** Zero-initialised up projection (the adapter starts as the identity). */
  initWeights?: boolean
}

function checkPrefixAndAdapter(o: HybridPrefixOptions): void {
  positiveInt('numVirtualTokens', o.numVirtualTokens)
  positiveInt('bottleneckSize', o.bottleneckSize)
}

export interface MamAdapterConfigOptions extends HybridPrefixOptions {
  /** The parallel adapter's scale s. */
  scaling?: number
}

/**
 * MAM adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
 * Learning", §4.4): prefix tuning at the attention plus a scaled parallel adapter at the FFN.
 * Defaults are the paper's: 30 prefix vectors, bottleneck 512, scale 4. Cannot be merged.
 */
export class MamAdapterConfig extends PeftConfig {
  readonly peftType = 'MAM_ADAPTER'
  constructor(options: MamAdapterConfigOptions = {}) {
    super(options)
    checkPrefixAndAdapter(options)
  }
}

export interface UniPeltConfigOptions extends HybridPrefixOptions {
  /** LoRA rank (> 0). */
  r?: number
  loraAlpha?: number
  loraDropout?: number
  /** LoRA's targets; default `q_proj` and `v_proj` (the paper's W_q, W_v). */
  targetModules?: string[] | string
}

/**
 * UniPELT (Mao et al. 2022): LoRA on W_q and W_v, prefix tuning, and a serial adapter after
 * the FFN, each scaled by a learned per-token gate σ(W_G x). Cannot be merged.
 */
export class UniPeltConfig extends PeftConfig {
  readonly peftType = 'UNIPELT'
  constructor(options: UniPeltConfigOptions = {}) {
    super(options)
    checkPrefixAndAdapter(options)
    positiveInt('r', options.r)
  }
}
