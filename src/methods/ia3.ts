import { PeftConfig, type PeftConfigOptions } from './config'

/** (IA)³ (Liu et al. 2022): learned vectors rescaling activations; mergeable. */
export interface IA3ConfigOptions extends PeftConfigOptions {
  targetModules?: string[] | string
  /** Modules whose input is scaled (default for LLaMA: down_proj); the others scale their output. */
  feedforwardModules?: string[] | string
  excludeModules?: string[] | string
  initIa3Weights?: boolean
}

export class IA3Config extends PeftConfig {
  readonly peftType = 'IA3'
  constructor(options: IA3ConfigOptions = {}) {
    super(options)
  }
}
