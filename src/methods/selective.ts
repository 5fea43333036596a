import { PeftConfig, type PeftConfigOptions } from './config'

interface TargetOptions extends PeftConfigOptions {
  targetModules?: string[] | string
  excludeModules?: string[] | string
}

/** LN tuning (Zhao et al. 2023): train the norm weights only. */
export class LNTuningConfig extends PeftConfig {
  readonly peftType = 'LN_TUNING'
  constructor(options: TargetOptions = {}) {
    super(options)
  }
}

/** BitFit-style bias tuning (Ben Zaken et al. 2022): zero-initialised biases on chosen linears. */
export class BiasTuningConfig extends PeftConfig {
  readonly peftType = 'BIAS_TUNING'
  constructor(options: TargetOptions & { layersToTransform?: number[] | number } = {}) {
    super(options)
  }
}

/** SSF (Lian et al. 2022): per-channel scale and shift after chosen modules. */
export class SsfConfig extends PeftConfig {
  readonly peftType = 'SSF'
  constructor(options: TargetOptions & { layersToTransform?: number[] | number } = {}) {
    super(options)
  }
}
