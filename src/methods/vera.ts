import { PeftConfig, positiveInt, probability, type PeftConfigOptions } from './config'

/** VeRA (Kopiczko et al. 2024): shared frozen random projections, trained scaling vectors. */
export interface VeraConfigOptions extends PeftConfigOptions {
  r?: number
  targetModules?: string[] | string
  projectionPrngKey?: number
  /** Store the shared projections in the adapter file (default true). */
  saveProjection?: boolean
  veraDropout?: number
  dInitial?: number
}

export class VeraConfig extends PeftConfig {
  readonly peftType = 'VERA'
  constructor(options: VeraConfigOptions = {}) {
    super(options)
    positiveInt('r', options.r)
    probability('veraDropout', options.veraDropout)
  }
}
