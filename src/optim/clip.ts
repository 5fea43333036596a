// Gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_: one sum-of-squares
// call and at most one scaling call per model, never a loop over elements in JS.
import type { Parameter } from '../parameter'
import { byModel, toParamList, type ParamsLike } from './params'
import { bool, options, positive } from './validate'

export interface ClipGradNormOptions {
  /** Throw when the total norm is NaN or Inf (torch's `error_if_nonfinite`). Default false. */
  errorIfNonfinite?: boolean
}

/**
 * Scales all gradients by `maxNorm / (norm + 1e-6)` when that is below 1, so their global L2
 * norm becomes (about) `maxNorm`. Returns the norm before clipping. Parameters without a
 * gradient count as zero. Unlike torch, a NaN norm leaves the gradients as they are (torch
 * multiplies them by NaN); the optimizer's NaN/Inf guard then refuses or skips the step.
 */
export async function clipGradNorm(params: Parameter | ParamsLike, maxNorm: number, opts: ClipGradNormOptions = {}): Promise<number> {
  const list = toParamList('clipGradNorm: params', params)
  positive('clipGradNorm: maxNorm', maxNorm, true)
  const o = options<ClipGradNormOptions>('clipGradNorm: options', opts)
  const errorIfNonfinite = bool('clipGradNorm: errorIfNonfinite', o.errorIfNonfinite ?? false)
  const groups = [...byModel(list)].map(([m, ps]): [typeof m, string[]] => [m, [...new Set(ps.map((p) => p.name))]])
  let sq = 0
  for (const [m, names] of groups) sq += (await m.gradSqSum(names)) as number
  const norm = Math.sqrt(sq)
  if (!Number.isFinite(norm)) {
    if (errorIfNonfinite) {
      throw new Error(`clipGradNorm: the total norm of the gradients is ${norm}, so they cannot be clipped (set errorIfNonfinite: false to continue)`)
    }
    return norm
  }
  const scale = maxNorm / (norm + 1e-6)
  if (scale < 1) for (const [m, names] of groups) m.scaleGrads(names, scale)
  return norm
}
