// Multi-task composition and faster prompt tuning from the PEFT survey (Han et al. 2024, issue 16):
// adapters built over several already-trained ones. Each is a `peft_type` of ours
// (docs/methods.md); the native core validates every field.
import { methodConfig, nonNegative, positiveInt, type PeftConfigOptions } from './config'
import type { BottleneckOptions } from './adapters'

/**
 * AdapterFusion (Pfeiffer et al. 2021): an attention (query/key/value [d, d] per layer) over the
 * outputs of `numAdapters` serial bottleneck adapters, which are frozen. Build one over trained
 * adapters with `peft.addComposedAdapter('adapter-fusion', names, fusionName)`; from this config
 * alone the fused adapters start random (their shape: the bottleneck fields).
 */
export interface AdapterFusionConfigOptions extends BottleneckOptions {
  numAdapters?: number
  /** true (default): V starts as the identity. */
  initWeights?: boolean
}

export class AdapterFusionConfig extends methodConfig<AdapterFusionConfigOptions, 'ADAPTER_FUSION'>('ADAPTER_FUSION', (options) => {
  positiveInt('numAdapters', options.numAdapters)
  positiveInt('bottleneckSize', options.bottleneckSize)
}) {}

/**
 * MoLE (Wu et al. 2024): a learned per-layer, per-token gate over `numExperts` LoRAs of rank `r`,
 * which are frozen. Build one over trained LoRA adapters with
 * `peft.addComposedAdapter('mole', names, moleName)`; from this config alone the LoRAs start
 * random. The mean gates are reported in training metrics (`auxLosses['routing/mole.expert0']`, ...).
 */
export interface MoleConfigOptions extends PeftConfigOptions {
  numExperts?: number
  r?: number
  loraAlpha?: number
  /** τ in softmax(ε e / τ) (default 1). */
  temperature?: number
  /** Weight of the gating balance loss −Σᵢ log qᵢ (default 0: none). */
  balanceLossCoef?: number
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
}

export class MoleConfig extends methodConfig<MoleConfigOptions, 'MOLE'>('MOLE', (options) => {
  positiveInt('numExperts', options.numExperts)
  positiveInt('r', options.r)
}) {}

/**
 * AdaMix (Wang et al. 2022): `numExperts` bottleneck experts per adapter position; training
 * draws one down- and one up-projection per layer and forward, inference averages the experts'
 * weights (one adapter's cost). Serial bottleneck fields; Houlsby's placement by default.
 */
export interface AdaMixConfigOptions extends BottleneckOptions {
  numExperts?: number
  /** true (default): the up-projections start at zero (the identity). */
  initWeights?: boolean
  /**
   * λ of the consistency loss (§2.3): a second routed forward per training step and
   * λ/2 · symmetric KL between the two predictions, in `auxLosses.adamix_consistency`.
   * Default 1; 0 turns it off (and the second forward).
   */
  consistencyWeight?: number
}

export class AdaMixConfig extends methodConfig<AdaMixConfigOptions, 'ADAMIX'>('ADAMIX', (options) => {
  positiveInt('numExperts', options.numExperts)
  positiveInt('bottleneckSize', options.bottleneckSize)
  nonNegative('consistencyWeight', options.consistencyWeight)
}) {}

interface InstancePromptOptions extends PeftConfigOptions {
  /** Virtual tokens prepended to every sequence (> 0): SMoP's length of each prompt. */
  numVirtualTokens: number
  promptTuningInit?: 'RANDOM' | 'SAMPLE_VOCAB' | 'TEXT'
  promptTuningInitText?: string
  promptTuningInitTokenIds?: number[]
  /** SPoT: start the prompt(s) from a saved prompt-tuning adapter of the same total shape. */
  initFrom?: string
}

/**
 * SMoP (Choi et al. 2023): `numPrompts` short prompts of `numVirtualTokens` each and a router
 * on the mean input embedding; each instance runs its top-1 prompt scaled by its probability.
 */
export interface SmopConfigOptions extends InstancePromptOptions {
  numPrompts?: number
  /** σ of the Gaussian noise on the router logits in training (default 1). */
  routerNoise?: number
}

export class SmopConfig extends methodConfig<SmopConfigOptions, 'SMOP'>('SMOP', (options) => {
  positiveInt('numVirtualTokens', options.numVirtualTokens)
  positiveInt('numPrompts', options.numPrompts)
}, false) {}

/**
 * IDPG (Wu et al. 2022): the prompt generated per instance by a bottleneck MLP
 * (`generatorHidden` wide) from the mean input embedding, plus a prompt-tuning prompt as its bias.
 */
export interface IdpgConfigOptions extends InstancePromptOptions {
  generatorHidden?: number
  /** true (default): the generator's up-projection starts at zero (IDPG starts as prompt tuning). */
  initWeights?: boolean
}

export class IdpgConfig extends methodConfig<IdpgConfigOptions, 'IDPG'>('IDPG', (options) => {
  positiveInt('numVirtualTokens', options.numVirtualTokens)
  positiveInt('generatorHidden', options.generatorHidden)
}, false) {}

/**
 * Prefix-Propagation (Li et al. 2023): `numVirtualTokens` prompt tokens whose hidden states get a
 * trained offset at every layer (instead of prefix tuning's per-layer keys and values).
 */
export interface PrefixPropagationConfigOptions extends InstancePromptOptions {
  /** true (default): the per-layer offsets start at zero (it starts as prompt tuning). */
  initWeights?: boolean
}

export class PrefixPropagationConfig extends methodConfig<PrefixPropagationConfigOptions, 'PREFIX_PROPAGATION'>('PREFIX_PROPAGATION', (options) => {
  positiveInt('numVirtualTokens', options.numVirtualTokens)
}, false) {}

/**
 * LPT (Liu et al. 2022): one prompt inserted at an intermediate decoder layer (`insertionLayer`,
 * default the middle), generated per instance from that layer's mean hidden state by IDPG's
 * bottleneck generator. Below that layer the tokens do not see it. Cannot be merged.
 */
export interface LptConfigOptions extends IdpgConfigOptions {
  /** 0-based decoder layer the prompt enters (default: num_hidden_layers / 2). */
  insertionLayer?: number
}

export class LptConfig extends methodConfig<LptConfigOptions, 'LPT'>('LPT', (options) => {
  positiveInt('numVirtualTokens', options.numVirtualTokens)
  positiveInt('generatorHidden', options.generatorHidden)
  nonNegative('insertionLayer', options.insertionLayer, true)
}, false) {}
