import { PeftConfig, positiveInt, probability, type PeftConfigOptions } from './config'

interface LycorisOptions extends PeftConfigOptions {
  r?: number
  alpha?: number
  rankDropout?: number
  moduleDropout?: number
  targetModules?: string[] | string
  rankPattern?: Record<string, number>
  alphaPattern?: Record<string, number>
}

function check(o: LycorisOptions): void {
  positiveInt('r', o.r)
  probability('rankDropout', o.rankDropout)
  probability('moduleDropout', o.moduleDropout)
}

/** LoHa (Hyeon-Woo et al. 2022, FedPara): a Hadamard product of two low-rank products. */
export interface LoHaConfigOptions extends LycorisOptions {
  useEffectiveConv2d?: boolean
}

export class LoHaConfig extends PeftConfig {
  readonly peftType = 'LOHA'
  constructor(options: LoHaConfigOptions = {}) {
    super(options)
    check(options)
  }
}

/** LoKr (Edalati et al. 2022; LyCORIS): a Kronecker product of (low-rank) factors. */
export interface LoKrConfigOptions extends LycorisOptions {
  decomposeBoth?: boolean
  decomposeFactor?: number
  initWeights?: boolean | 'lycoris'
}

export class LoKrConfig extends PeftConfig {
  readonly peftType = 'LOKR'
  constructor(options: LoKrConfigOptions = {}) {
    super(options)
    check(options)
  }
}
