// Laplace-LoRA (Yang, Robeyns, Wang & Aitchison 2024, "Bayesian Low-rank Adaptation for Large
// Language Models", ICLR): a post-hoc Kronecker-factored Laplace approximation over a trained
// LoRA adapter's A and B matrices, for calibrated next-token probabilities. The numerics are in
// crates/peft-core/src/tuners/laplace/; this file checks arguments and feeds the batches.
import type * as Native from '../index'
import type { PeftModel } from './peft'
import type { FisherBatch } from './methods/sparse'
import { adapterNameArg, flatBatches, flatIds, flatMask, intArg, tokenIdList, type IdRows } from './inputs'

/** A batch to fit on: ids, optional mask, and next-token labels as for training (-100 ignored). */
export type LaplaceBatch = FisherBatch

export interface LaplaceFitOptions {
  /** The LoRA adapter (default: the active one). */
  adapterName?: string
  /**
   * The curvature: "fisher" (default, as the paper: labels drawn from the model's own predictive,
   * one per token) or "empirical" (the given labels).
   */
  hessian?: 'fisher' | 'empirical'
  /** The prior precision λ; default: the one maximising the Laplace marginal likelihood. */
  priorPrecision?: number
  /** Kronecker factors with a larger side (d × d) are kept low rank (default 256). */
  maxFactorSide?: number
  /** Their rank k: memory O(d·k) (default 32). */
  factorRank?: number
  /** Seeds the sampled labels (default 0). */
  seed?: number
  /** Stops the fit between batches (the promise rejects with the signal's reason). */
  signal?: AbortSignal
  /** Called after each batch. */
  onBatch?: (done: number, total: number) => void
}

export type LaplacePredictMethod = 'glm' | 'mc' | 'map'

export interface LaplacePredictOptions {
  /** Positions whose next token is predicted: one list for every row, or one per row; default: each row's last attended token. */
  positions?: number[] | number[][]
  /** Token ids to predict over (e.g. multiple-choice answers), renormalised over them; default: the whole vocabulary. */
  targetTokens?: ArrayLike<number>
  /**
   * "glm" (default with targetTokens): the linearised model's Gaussian logits, probit-scaled;
   * one backward per target and position, so it needs targetTokens.
   * "mc" (default without): the mean softmax over `samples` draws of the LoRA weights.
   * "map": the adapter's own softmax, for comparison.
   */
  method?: LaplacePredictMethod
  /** Posterior samples for "mc" (default 16). */
  samples?: number
  seed?: number
  attentionMask?: IdRows
}

export interface LaplacePrediction {
  /** [row, position] of each distribution, in order. */
  positions: [number, number][]
  /** The tokens each distribution is over (targetTokens), or null for the whole vocabulary. */
  tokens: number[] | null
  /** One probability vector per position. */
  probs: Float32Array[]
  /** "glm" only: the variance of each logit under the posterior. */
  logitVariance?: Float32Array[]
}

/** A fitted (or loaded) Laplace-LoRA posterior over one adapter. */
export class LaplacePosterior {
  /** The adapter, λ, the log marginal likelihood at λ, the curvature, the tokens fitted on and the factor bounds. */
  readonly summary: Native.LaplaceSummary

  /** @internal */
  constructor(
    private readonly peft: PeftModel,
    /** @internal */
    readonly native: Native.NativeLaplace,
  ) {
    this.summary = peft.baseModel.native.laplaceSummary(native)
  }

  get priorPrecision(): number {
    return this.summary.priorPrecision
  }

  /** Writes `laplace_state.safetensors` and `laplace_config.json` into `dir` (the adapter's folder). */
  save(dir: string): Promise<void> {
    if (typeof dir !== 'string' || dir === '') throw new Error(`save: dir: expected a folder path, found ${String(dir)}`)
    return this.peft.baseModel.native.laplaceSave(this.native, dir)
  }

  /** Predictive probabilities of the next token (see LaplacePredictOptions). */
  async predict(inputIds: IdRows, opts: LaplacePredictOptions = {}): Promise<LaplacePrediction> {
    const model = this.peft.baseModel
    const vocab = model.config.vocab_size
    const ids = flatIds('inputIds', inputIds, vocab)
    const mask = opts.attentionMask ? flatMask('attentionMask', opts.attentionMask, ids.batch, ids.seq) : undefined
    const targets = opts.targetTokens === undefined ? undefined : tokenIdList('targetTokens', opts.targetTokens, vocab)
    const method = opts.method ?? (targets ? 'glm' : 'mc')
    if (!['glm', 'mc', 'map'].includes(method)) throw new Error(`method: expected "glm", "mc" or "map", found ${String(method)}`)
    const samples = intArg('samples', opts.samples ?? 16, method === 'mc' ? 1 : 0, 100000)
    const positions = positionRows(opts.positions, ids.batch, ids.seq)
    const flat = await model.native.laplacePredict(this.native, ids.data, ids.batch, ids.seq, mask, positions, targets, method, samples, intArg('seed', opts.seed ?? 0))
    const width = targets?.length ?? vocab
    const n = positions ? positions.reduce((s, r) => s + r.length, 0) : ids.batch
    const at: [number, number][] = positions ? positions.flatMap((r, i) => r.map((p) => [i, p] as [number, number])) : lastPositions(mask, ids.batch, ids.seq)
    const slice = (offset: number) => Array.from({ length: n }, (_, i) => flat.slice(offset + i * width, offset + (i + 1) * width))
    return { positions: at, tokens: targets ?? null, probs: slice(0), ...(method === 'glm' ? { logitVariance: slice(n * width) } : {}) }
  }
}

function positionRows(p: number[] | number[][] | undefined, batch: number, seq: number): number[][] | undefined {
  if (p === undefined) return undefined
  if (!Array.isArray(p) || p.length === 0) throw new Error('positions: expected a non-empty array of positions (or one array per row)')
  const rows = Array.isArray(p[0]) ? (p as number[][]) : Array.from({ length: batch }, () => p as number[])
  if (rows.length !== batch) throw new Error(`positions: expected one list per row of inputIds (${batch}), found ${rows.length}`)
  return rows.map((r, i) => {
    if (!Array.isArray(r) || r.length === 0) throw new Error(`positions[${i}]: expected a non-empty array of positions`)
    return r.map((v, j) => intArg(`positions[${i}][${j}]`, v, 0, seq - 1, '(below the sequence length)'))
  })
}

function lastPositions(mask: Uint8Array | undefined, batch: number, seq: number): [number, number][] {
  return Array.from({ length: batch }, (_, r) => {
    let last = seq - 1
    if (mask) while (last > 0 && mask[r * seq + last] === 0) last--
    return [r, last] as [number, number]
  })
}

/**
 * Fits Laplace-LoRA over `peft`'s LoRA adapter: one forward and backward per batch off the JS
 * thread, the Kronecker factors accumulated, then the posterior (λ from the marginal likelihood
 * unless given). The posterior is kept on `peft` for `peft.laplacePredict`.
 */
export async function fitLaplace(peft: PeftModel, batches: LaplaceBatch[], opts: LaplaceFitOptions = {}): Promise<LaplacePosterior> {
  if (!Array.isArray(batches) || batches.length === 0) throw new Error('batches: expected a non-empty array of { inputIds, labels }')
  const adapter = adapterNameArg('adapterName', opts.adapterName ?? peft.activeAdapter)
  const hessian = opts.hessian ?? 'fisher'
  if (hessian !== 'fisher' && hessian !== 'empirical') throw new Error(`hessian: expected "fisher" or "empirical", found ${String(hessian)}`)
  if (opts.priorPrecision !== undefined && !(Number.isFinite(opts.priorPrecision) && opts.priorPrecision > 0)) {
    throw new Error(`priorPrecision: expected a finite number > 0 (or leave it out to fit it by the marginal likelihood), found ${opts.priorPrecision}`)
  }
  const native = peft.baseModel.native
  const flat = flatBatches(batches, peft.config.vocab_size)
  opts.signal?.throwIfAborted()
  const fit = native.laplaceBegin(adapter, hessian, intArg('maxFactorSide', opts.maxFactorSide ?? 256, 1), intArg('factorRank', opts.factorRank ?? 32, 1), intArg('seed', opts.seed ?? 0))
  for (const [i, b] of flat.entries()) {
    opts.signal?.throwIfAborted()
    await native.laplaceAddBatch(fit, i, b)
    opts.onBatch?.(i + 1, flat.length)
  }
  opts.signal?.throwIfAborted()
  await native.laplaceFinish(fit, opts.priorPrecision)
  return remember(peft, new LaplacePosterior(peft, fit))
}

/** The posterior saved in `dir` (by `LaplacePosterior.save`) for `peft`'s adapter (default: the active one). */
export function loadLaplace(peft: PeftModel, dir: string, opts: { adapterName?: string } = {}): LaplacePosterior {
  const adapter = adapterNameArg('adapterName', opts.adapterName ?? peft.activeAdapter)
  return remember(peft, new LaplacePosterior(peft, peft.baseModel.native.laplaceLoad(dir, adapter)))
}

const fitted = new WeakMap<PeftModel, Map<string, LaplacePosterior>>()

function remember(peft: PeftModel, posterior: LaplacePosterior): LaplacePosterior {
  const byAdapter = fitted.get(peft) ?? new Map<string, LaplacePosterior>()
  byAdapter.set(posterior.summary.adapter, posterior)
  fitted.set(peft, byAdapter)
  return posterior
}

/** `peft.laplacePredict`: the predictive of the posterior last fitted or loaded for the active adapter. */
export function laplacePredict(peft: PeftModel, inputIds: IdRows, opts: LaplacePredictOptions = {}): Promise<LaplacePrediction> {
  const posterior = fitted.get(peft)?.get(peft.activeAdapter)
  if (!posterior) throw new Error(`laplacePredict: adapter "${peft.activeAdapter}" has no Laplace posterior; call fitLaplace(batches) or loadLaplace(dir) first`)
  return posterior.predict(inputIds, opts)
}
