import { PeftConfig, positiveInt, type PeftConfigOptions } from './config'

interface PromptLearningOptions extends PeftConfigOptions {
  /** Virtual tokens prepended to every sequence (> 0). */
  numVirtualTokens: number
}

function check(o: PromptLearningOptions): void {
  if (o.numVirtualTokens === undefined) throw new Error('numVirtualTokens: expected an integer > 0, found nothing')
  positiveInt('numVirtualTokens', o.numVirtualTokens)
}

/** Prompt tuning (Lester et al. 2021): trained virtual-token embeddings before the input. */
export interface PromptTuningConfigOptions extends PromptLearningOptions {
  promptTuningInit?: 'RANDOM' | 'TEXT'
  promptTuningInitText?: string
  /** For `TEXT` init: the tokenized init text (PEFT tokenizes `promptTuningInitText` itself). */
  promptTuningInitTokenIds?: number[]
  /**
   * SPoT (Vu et al. 2022): start from a source task's trained prompt, the folder of a saved
   * prompt-tuning adapter with this `numVirtualTokens` on this model (not written to the saved config).
   */
  initFrom?: string
}

export class PromptTuningConfig extends PeftConfig {
  readonly peftType = 'PROMPT_TUNING'
  constructor(options: PromptTuningConfigOptions) {
    super(options)
    check(options)
    if (options.initFrom !== undefined && (typeof options.initFrom !== 'string' || options.initFrom === '')) {
      throw new Error(`initFrom: expected the folder of a saved prompt-tuning adapter, found ${JSON.stringify(options.initFrom)}`)
    }
  }
}

/** Prefix tuning (Li & Liang 2021): trained key/value prefixes in every layer. */
export interface PrefixTuningConfigOptions extends PromptLearningOptions {
  /** Reparameterise the prefixes through an MLP while training. */
  prefixProjection?: boolean
  encoderHiddenSize?: number
}

export class PrefixTuningConfig extends PeftConfig {
  readonly peftType = 'PREFIX_TUNING'
  constructor(options: PrefixTuningConfigOptions) {
    super(options)
    check(options)
  }
}

/** P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual tokens from an MLP prompt encoder. */
export interface PromptEncoderConfigOptions extends PromptLearningOptions {
  encoderReparameterizationType?: 'MLP'
  encoderHiddenSize?: number
  encoderNumLayers?: number
  encoderDropout?: number
}

export class PromptEncoderConfig extends PeftConfig {
  readonly peftType = 'P_TUNING'
  constructor(options: PromptEncoderConfigOptions) {
    super(options)
    check(options)
  }
}

/**
 * DePT (Shi & Lipani 2024): a shorter soft prompt plus low-rank offsets A·B added to the input
 * embeddings by position (rows of A for positions 0..maxLength−1).
 */
export interface DeptConfigOptions extends PromptTuningConfigOptions {
  /** Rank of the embedding offsets (default 60, the paper's). */
  r?: number
  /** Positions that get an offset (default: 256, or the model's max positions when fewer). */
  maxLength?: number
}

export class DeptConfig extends PeftConfig {
  readonly peftType = 'DEPT'
  constructor(options: DeptConfigOptions) {
    super(options)
    check(options)
    positiveInt('r', options.r)
    positiveInt('maxLength', options.maxLength)
  }
}
