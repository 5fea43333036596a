import { PeftConfig, positiveInt, type PeftConfigOptions } from './config'

/** AdaLoRA (Zhang et al. 2023): SVD-form LoRA with importance-based rank allocation. */
export interface AdaLoraConfigOptions extends PeftConfigOptions {
  initR?: number
  targetR?: number
  tinit?: number
  tfinal?: number
  deltaT?: number
  beta1?: number
  beta2?: number
  orthRegWeight?: number
  totalStep?: number
  loraAlpha?: number
  loraDropout?: number
  targetModules?: string[] | string
}

export class AdaLoraConfig extends PeftConfig {
  readonly peftType = 'ADALORA'
  constructor(options: AdaLoraConfigOptions = {}) {
    super(options)
    positiveInt('initR', options.initR)
    positiveInt('targetR', options.targetR)
    positiveInt('totalStep', options.totalStep)
  }
}
