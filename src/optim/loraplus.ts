// LoRA+ (Hayou et al. 2024): B matrices learn `loraPlusLrRatio` times faster than A. The
// groups follow PEFT's create_loraplus_optimizer (peft/optimizers/loraplus.py), in its order:
//   groupA          everything else (lora_A, lora_embedding_A, other 2-D params)    lr
//   embedding       lora_embedding_B                                               loraPlusLrEmbedding
//   groupB          lora_B and 1-D params (biases, norms) that take weight decay    lr × ratio
//   groupB_no_decay lora_B and 1-D params that do not (names containing "bias")     lr × ratio, no decay
// PEFT picks the embedding group by module type (and, as written, its attribute lookup never
// matches); here it is picked by name, as the LoRA+ reference code does. PEFT's no-decay set is
// "bias" names plus nn.LayerNorm modules; LLaMA has no nn.LayerNorm, so names suffice here,
// and `noDecay` overrides the rule. Frozen parameters are left out, as in PEFT.
import type { Parameter } from '../parameter'
import { AdamW, type AdamWOptions } from './adamw'
import { describe, nonNegative, positive } from './validate'

export interface LoraPlusOptions {
  lr: number
  /** lr of B over lr of A (the paper suggests 2–16 for most tasks). Default 16. */
  loraPlusLrRatio?: number
  /** lr of lora_embedding_B. Default 1e-6. */
  loraPlusLrEmbedding?: number
  /** Default 0, as PEFT (`optimizer_kwargs.get("weight_decay", 0.0)`). */
  weightDecay?: number
  /** Which 1-D / lora_B parameters take no weight decay. Default: names containing "bias". */
  noDecay?: (name: string) => boolean
}

export type LoraPlusGroupName = 'groupA' | 'embedding' | 'groupB' | 'groupB_no_decay'

// A type alias, not an interface, so that it is assignable to an optimizer's group input.
export type LoraPlusGroup<P> = {
  name: LoraPlusGroupName
  params: P[]
  lr: number
  weightDecay: number
}

/** What the grouping needs from a parameter (so tests and tools can pass plain objects). */
export interface ShapedParam {
  readonly shape: readonly number[]
  readonly requiresGrad: boolean
}

export function loraPlusParamGroups<P extends ShapedParam>(namedParams: Iterable<readonly [string, P]>, opts: LoraPlusOptions): LoraPlusGroup<P>[] {
  if (typeof opts !== 'object' || opts === null) throw new Error(`loraPlusParamGroups: options: expected { lr, ... }, found ${describe(opts)}`)
  const lr = nonNegative('loraPlusParamGroups: lr', opts.lr)
  const ratio = positive('loraPlusParamGroups: loraPlusLrRatio', opts.loraPlusLrRatio ?? 16)
  const lrEmbedding = nonNegative('loraPlusParamGroups: loraPlusLrEmbedding', opts.loraPlusLrEmbedding ?? 1e-6)
  const weightDecay = nonNegative('loraPlusParamGroups: weightDecay', opts.weightDecay ?? 0)
  const noDecay = opts.noDecay ?? ((name: string) => name.includes('bias'))
  if (typeof noDecay !== 'function') throw new Error(`loraPlusParamGroups: noDecay: expected a function (name) => boolean, found ${describe(noDecay)}`)
  const groups: Record<LoraPlusGroupName, P[]> = { groupA: [], embedding: [], groupB: [], groupB_no_decay: [] }
  let i = 0
  for (const entry of namedParams) {
    const [name, p] = Array.isArray(entry) ? entry : []
    if (typeof name !== 'string' || typeof p !== 'object' || p === null || !Array.isArray(p.shape)) {
      throw new Error(`loraPlusParamGroups: namedParams[${i}]: expected a [name, Parameter] pair, found ${describe(entry)}`)
    }
    i++
    if (!p.requiresGrad) continue
    if (name.includes('lora_embedding_B')) groups.embedding.push(p)
    else if (name.includes('lora_B') || p.shape.length === 1) groups[noDecay(name) ? 'groupB_no_decay' : 'groupB'].push(p)
    else groups.groupA.push(p)
  }
  return [
    { name: 'groupA', params: groups.groupA, lr, weightDecay },
    { name: 'embedding', params: groups.embedding, lr: lrEmbedding, weightDecay },
    { name: 'groupB', params: groups.groupB, lr: lr * ratio, weightDecay },
    { name: 'groupB_no_decay', params: groups.groupB_no_decay, lr: lr * ratio, weightDecay: 0 },
  ]
}

/** An AdamW over the LoRA+ groups; `betas`, `eps` and `skipNonFinite` go to AdamW. */
export function createLoraPlusOptimizer(
  namedParams: Iterable<readonly [string, Parameter]>,
  opts: LoraPlusOptions & Omit<AdamWOptions, 'lr' | 'weightDecay'>,
): AdamW {
  const groups = loraPlusParamGroups(namedParams, opts)
  const { betas, eps, skipNonFinite } = opts
  return new AdamW(groups, { lr: opts.lr, weightDecay: opts.weightDecay ?? 0, betas, eps, skipNonFinite })
}
