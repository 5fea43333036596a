// Sparse selective fine-tuning with a fixed mask (FishMask, Sung et al. 2021; diff pruning's
// fixed-mask form, Guo et al. 2021): each targeted weight trains only at the entries of a mask
// chosen once, by magnitude, by a Fisher estimate on your data, or at random.
import { PeftConfig, snakeKeys, type PeftConfigOptions } from './config'
import { LlamaModel } from '../model'
import { PeftModel } from '../peft'
import { Tensor } from '../tensor'
import { flatBatches, type IdRows } from '../inputs'
import type { NativeModel } from '../native'
import type * as Native from '../../index'
import { peftWarnings } from '../warnings'
import type { NativeWarning } from '../../index'

export type MaskType = 'magnitude' | 'smallest_magnitude' | 'fisher' | 'random'

interface SparseTargets {
  targetModules?: string[] | string
  excludeModules?: string[] | string
  layersToTransform?: number[] | number
}

export interface SparseMaskConfigOptions extends PeftConfigOptions, SparseTargets {
  /** Fraction of each targeted weight that trains, in (0, 1]: k = max(1, round(density · numel)). */
  density: number
  /** How the mask is chosen (default "magnitude"; "fisher" when `fisher` is given). */
  maskType?: MaskType
  /** Seeds a "random" mask (default 0): the config alone reproduces it. */
  maskSeed?: number
  /** Scores from `estimateFisher` for a "fisher" mask (kept native, not written to the file). */
  fisher?: FisherScores
}

/** SPARSE_MASK (ours): trained deltas at fixed flat indices of each targeted linear's weight. */
export class SparseMaskConfig extends PeftConfig {
  readonly peftType = 'SPARSE_MASK'
  readonly fisher?: FisherScores

  constructor(options: SparseMaskConfigOptions) {
    const { fisher, ...rest } = options ?? ({} as SparseMaskConfigOptions)
    super(fisher !== undefined && rest.maskType === undefined ? { ...rest, maskType: 'fisher' } : rest)
    const d = rest.density
    if (!(typeof d === 'number' && d > 0 && d <= 1)) {
      throw new Error(`density: expected a number in (0, 1] (the fraction of each targeted weight to train), found ${String(d)}`)
    }
    if (fisher !== undefined && !(fisher instanceof FisherScores)) throw new Error('fisher: expected the FisherScores that estimateFisher returned')
    this.fisher = fisher
  }

  /** @internal A "fisher" mask needs the native scores, which JSON cannot carry. */
  override addTo(native: NativeModel, name: string, seed: number): Promise<NativeWarning[]> | undefined {
    return this.fisher ? native.addSparseMaskAdapter(name, JSON.stringify(this.toJSON()), seed, this.fisher.native) : undefined
  }
}

/**
 * PaFi (Liao et al. 2023): a sparse mask on the smallest-magnitude entries of each targeted
 * weight, chosen without data; merges, so it adds no inference latency. A SPARSE_MASK file
 * with `mask_type: "smallest_magnitude"`. Default density 0.005 (the paper trains ~0.5% of the weights).
 */
export class PaFiConfig extends SparseMaskConfig {
  constructor(options: Omit<SparseMaskConfigOptions, 'density' | 'maskType' | 'fisher'> & { density?: number } = {}) {
    super({ density: 0.005, ...options, maskType: 'smallest_magnitude' })
  }
}

/** Empirical Fisher scores [out, in] of base weights, by module path (native memory). */
export class FisherScores {
  /** @internal */
  constructor(readonly native: Native.NativeFisherScores) {}

  /** The module paths scored, e.g. `model.layers.0.self_attn.q_proj`. */
  get modules(): string[] {
    return this.native.modules
  }

  /** The scores of one module, or undefined when it was not scored. */
  get(module: string): Tensor | undefined {
    const t = this.native.get(module)
    return t ? new Tensor(t) : undefined
  }

  /** Frees the scores now; adapters built from them keep only their chosen indices. */
  dispose(): void {
    this.native.dispose()
  }
}

export interface FisherBatch {
  inputIds: IdRows
  attentionMask?: IdRows
  /** Next-token targets as for training (-100 ignored). */
  labels: IdRows
}

/**
 * FishMask's criterion (Sung et al. 2021, eq. 2): the mean over `batches` of the squared
 * gradient of each batch's loss with respect to the targeted base weights (batches of one
 * example give the paper's per-example estimate). Runs the base model alone; its weights are
 * left as they were (frozen, no gradients). Targets default to every linear but the head. The
 * scores hold one float32 per targeted weight entry: `dispose()` them after injecting.
 */
export async function estimateFisher(model: LlamaModel | PeftModel, batches: FisherBatch[], opts: SparseTargets = {}): Promise<FisherScores> {
  const base = model instanceof PeftModel ? model.baseModel : model
  if (!(base instanceof LlamaModel)) throw new Error('model: expected a LlamaModel or a PeftModel')
  if (!Array.isArray(batches) || batches.length === 0) throw new Error('batches: expected a non-empty array of { inputIds, labels }')
  const flat = flatBatches(batches, base.config.vocab_size)
  const scores = new FisherScores(await base.native.estimateFisher(JSON.stringify(snakeKeys({ ...opts })), flat))
  peftWarnings(scores.native.warnings)
  return scores
}
