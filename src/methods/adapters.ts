import { PeftConfig, positiveInt, type PeftConfigOptions } from './config'

export interface BottleneckOptions extends PeftConfigOptions {
  bottleneckSize?: number
  nonLinearity?: 'relu' | 'gelu' | 'silu' | 'tanh'
  scaling?: number
  /** Where the adapters sit: after `self_attn` and/or `mlp`. */
  sublayers?: ('self_attn' | 'mlp')[]
  layersToTransform?: number[] | number
}

/** Serial bottleneck adapters (Houlsby et al. 2019), after attention and after the FFN. */
export class BottleneckAdapterConfig extends PeftConfig {
  readonly peftType = 'BOTTLENECK_ADAPTER'
  constructor(options: BottleneckOptions = {}) {
    super(options)
    positiveInt('bottleneckSize', options.bottleneckSize)
  }
}

/** The parallel adapter (He et al. 2022): a scaled bottleneck beside the FFN. */
export class ParallelAdapterConfig extends PeftConfig {
  readonly peftType = 'PARALLEL_ADAPTER'
  constructor(options: BottleneckOptions = {}) {
    super(options)
    positiveInt('bottleneckSize', options.bottleneckSize)
  }
}
