// The part every optimizer shares, as in torch.optim.Optimizer: parameter groups with
// per-group hyper-parameters, per-parameter state, skipping parameters without a gradient,
// the NaN/Inf guard, and torch-shaped state dicts. Subclasses supply only the per-parameter
// update (one native call) and how their state is saved and loaded.
import type { Parameter } from '../parameter'
import { byModel, paramKey, toGroupInputs, toParamList, type GroupInput, type OptimizerParams } from './params'
import { encodeTensor, groupToCamel, groupToSnake, rawTensor } from './codec'
import type { NativeTensor } from '../native'
import { bool, describe } from './validate'

/** A live group: its params, every hyper-parameter (defaults filled in), and any extra keys. */
export type ParamGroup<H> = H & { params: Parameter[]; initialLr?: number } & Record<string, unknown>

export interface OptimizerOptions {
  /** Skip (instead of refusing) a step whose gradients hold NaN or Inf. Default false. */
  skipNonFinite?: boolean
}

export type StepResult = { skipped: false } | { skipped: true; parameter: string; reason: string }

/** torch's layout: state by parameter index (over all groups, in order), then the groups. */
export interface OptimizerStateDict {
  state: Record<string, Record<string, unknown>>
  param_groups: (Record<string, unknown> & { params: number[] })[]
}

export abstract class Optimizer<H extends { lr: number }, S> {
  readonly paramGroups: ParamGroup<H>[] = []
  readonly defaults: Readonly<H>
  readonly skipNonFinite: boolean
  #state = new Map<string, S>()
  #skipped = 0
  #busy = false

  protected constructor(
    protected readonly kind: string,
    params: OptimizerParams<H>,
    defaults: H,
    opts: OptimizerOptions,
  ) {
    this.defaults = Object.freeze({ ...defaults })
    this.skipNonFinite = bool(`${kind}: skipNonFinite`, opts.skipNonFinite ?? false)
    toGroupInputs<H>(`${kind}: params`, params).forEach((g) => this.addParamGroup(g))
  }

  /** Checks one group's hyper-parameters; `where` prefixes every message. */
  protected abstract checkGroup(g: ParamGroup<H>, where: string): void
  /** One update of `p` (one native call); returns its new state. */
  protected abstract update(p: Parameter, g: ParamGroup<H>, state: S | undefined): Promise<S | undefined>
  /** `encode` turns a state tensor into its saved form (default: `encodeTensor`'s base64). */
  protected abstract saveState(state: S, encode?: (t: NativeTensor) => Promise<unknown>): Promise<Record<string, unknown>>
  /** Validates a saved state against `p` and rebuilds it; throws naming `where`. */
  protected abstract loadState(raw: Record<string, unknown>, p: Parameter, where: string): S

  /** Steps skipped because of non-finite gradients (with `skipNonFinite`). */
  get skippedSteps(): number {
    return this.#skipped
  }

  addParamGroup(group: GroupInput<H>): void {
    const where = `${this.kind}: paramGroups[${this.paramGroups.length}]`
    if (typeof group !== 'object' || group === null) throw new Error(`${where}: expected { params, ... }, found ${describe(group)}`)
    const params = toParamList(`${where}.params`, group.params)
    const seen = new Set(this.paramGroups.flatMap((g) => g.params.map(paramKey)))
    for (const p of params) {
      const k = paramKey(p)
      if (seen.has(k)) throw new Error(`${where}.params: parameter "${p.name}" appears more than once (in this or another group)`)
      seen.add(k)
    }
    // An explicit `undefined` means "use the default", as an absent key does. Arrays (betas)
    // are copied so that groups never share them with each other or with the caller.
    const given = Object.entries(group).filter(([, v]) => v !== undefined)
    const merged = Object.entries({ ...this.defaults, ...Object.fromEntries(given) })
    const g = { ...Object.fromEntries(merged.map(([k, v]) => [k, Array.isArray(v) ? v.slice() : v])), params } as ParamGroup<H>
    this.checkGroup(g, where)
    this.paramGroups.push(g)
  }

  /**
   * One update of every parameter that has a gradient. Refuses (rejects, nothing changed) a
   * step whose gradients hold NaN or Inf, or skips it with `skipNonFinite`.
   */
  async step(): Promise<StepResult> {
    if (this.#busy) throw new Error(`${this.kind}.step(): the previous step() has not finished; await it first`)
    this.#busy = true
    try {
      this.paramGroups.forEach((g, i) => this.checkGroup(g, `${this.kind}: paramGroups[${i}]`))
      const todo = this.withGrad()
      const bad = await firstNonFinite(todo.map(([p]) => p))
      if (bad) {
        const reason = `the gradient of "${bad.name}" holds ${bad.kind}`
        if (!this.skipNonFinite) {
          throw new Error(`${this.kind}.step(): ${reason}; no parameter was changed (lower the lr, clip gradients, or pass { skipNonFinite: true } to skip such steps)`)
        }
        this.#skipped++
        return { skipped: true, parameter: bad.name, reason }
      }
      for (const [p, g] of todo) {
        const k = paramKey(p)
        const next = await this.update(p, g, this.#state.get(k))
        if (next !== undefined) this.#state.set(k, next)
      }
      return { skipped: false }
    } finally {
      this.#busy = false
    }
  }

  /**
   * Forgets the state (moments, step count) of the parameters named `names`, so that they start
   * afresh at the next step (PeriodicLoRA's restart).
   */
  resetState(names: Iterable<string>): void {
    const drop = new Set(names)
    for (const p of this.paramGroups.flatMap((g) => g.params)) if (drop.has(p.name)) this.#state.delete(paramKey(p))
  }

  /**
   * Clears the gradients of this optimizer's parameters (to "none", as torch's default).
   */
  zeroGrad(): void {
    for (const [m, ps] of byModel(this.paramGroups.flatMap((g) => g.params))) m.zeroGrads(ps.map((p) => p.name))
  }

  async stateDict(): Promise<OptimizerStateDict> {
    return this.collectState(encodeTensor)
  }

  /** @internal The state dict with raw Float32Array tensors (what checkpoints write as safetensors). */
  async rawStateDict(): Promise<OptimizerStateDict> {
    return this.collectState(rawTensor)
  }

  private async collectState(encode: (t: NativeTensor) => Promise<unknown>): Promise<OptimizerStateDict> {
    const state: OptimizerStateDict['state'] = {}
    const param_groups: OptimizerStateDict['param_groups'] = []
    let index = 0
    for (const g of this.paramGroups) {
      const { params, ...hyper } = g
      const ids: number[] = []
      for (const p of params) {
        const s = this.#state.get(paramKey(p))
        if (s !== undefined) state[String(index)] = await this.saveState(s, encode)
        ids.push(index++)
      }
      param_groups.push({ ...groupToSnake(hyper), params: ids })
    }
    return { state, param_groups }
  }

  /** Restores state and group hyper-parameters; validates everything before changing anything. */
  loadStateDict(sd: OptimizerStateDict): void {
    const where = `${this.kind}.loadStateDict`
    if (typeof sd !== 'object' || sd === null || typeof sd.state !== 'object' || sd.state === null || !Array.isArray(sd.param_groups)) {
      throw new Error(`${where}: expected { state, param_groups }, found ${describe(sd)}`)
    }
    if (sd.param_groups.length !== this.paramGroups.length) {
      throw new Error(`${where}: expected ${this.paramGroups.length} parameter groups, found ${sd.param_groups.length}`)
    }
    const byIndex = new Map<number, Parameter>()
    const groups = sd.param_groups.map((saved, i) => {
      const own = this.paramGroups[i]
      const ids = saved?.params
      if (!Array.isArray(ids) || ids.length !== own.params.length) {
        throw new Error(`${where}: param_groups[${i}].params: expected ${own.params.length} indices, found ${describe(ids)}`)
      }
      ids.forEach((id, j) => {
        if (!Number.isInteger(id) || byIndex.has(id)) throw new Error(`${where}: param_groups[${i}].params[${j}]: expected a unique integer index, found ${describe(id)}`)
        byIndex.set(id, own.params[j])
      })
      const { params: _ids, ...hyper } = saved
      const g = { ...own, ...groupToCamel(hyper), params: own.params } as ParamGroup<H>
      this.checkGroup(g, `${where}: param_groups[${i}]`)
      return g
    })
    const state = new Map<string, S>()
    for (const [id, raw] of Object.entries(sd.state)) {
      const p = byIndex.get(Number(id))
      if (!p) throw new Error(`${where}: state["${id}"]: no parameter has index ${id} in param_groups`)
      if (typeof raw !== 'object' || raw === null) throw new Error(`${where}: state["${id}"]: expected an object, found ${describe(raw)}`)
      state.set(paramKey(p), this.loadState(raw, p, `${where}: state["${id}"] ("${p.name}")`))
    }
    groups.forEach((g, i) => (this.paramGroups[i] = g))
    this.#state = state
  }

  /** [param, group] for every parameter that has a gradient now, in group order. */
  private withGrad(): [Parameter, ParamGroup<H>][] {
    const hasGrad = new Map<object, Set<string>>()
    for (const m of byModel(this.paramGroups.flatMap((g) => g.params)).keys()) {
      hasGrad.set(m, new Set((m.parameters() as { name: string; hasGrad: boolean }[]).filter((i) => i.hasGrad).map((i) => i.name)))
    }
    return this.paramGroups.flatMap((g) => g.params.filter((p) => hasGrad.get(p.native)!.has(p.name)).map((p): [Parameter, ParamGroup<H>] => [p, g]))
  }
}

/**
 * The first parameter (in order) whose gradient holds NaN or Inf. One sum-of-squares call per
 * model covers the common case; only a non-finite sum pays for the per-parameter search.
 * (A finite f32 gradient cannot overflow the f64 sum, so a non-finite sum means a bad element.)
 */
export async function firstNonFinite(params: Parameter[]): Promise<{ name: string; kind: string } | null> {
  let anyBad = false
  for (const [m, ps] of byModel(params)) {
    if (!Number.isFinite((await m.gradSqSum(ps.map((p) => p.name))) as number)) anyBad = true
  }
  if (!anyBad) return null
  for (const p of params) {
    const s = (await p.native.gradSqSum([p.name])) as number
    if (!Number.isFinite(s)) return { name: p.name, kind: Number.isNaN(s) ? 'NaN' : 'Inf' }
  }
  return null
}
