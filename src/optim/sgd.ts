// SGD as torch.optim.SGD: weight decay added to the gradient, momentum with dampening (the
// buffer starts as the first gradient), optional Nesterov. One native call per parameter
// (`sgdStep`); the momentum buffer is a native tensor this object owns.
import type { Parameter } from '../parameter'
import type { NativeTensor } from '../native'
import { Optimizer, type OptimizerOptions, type ParamGroup } from './optimizer'
import type { OptimizerParams } from './params'
import { decodeTensor, encodeTensor } from './codec'
import { bool, describe, nonNegative, options } from './validate'

export interface SGDHyper {
  lr: number
  momentum: number
  dampening: number
  weightDecay: number
  nesterov: boolean
}

export type SGDOptions = Partial<SGDHyper> & OptimizerOptions

interface SGDState {
  momentumBuffer: NativeTensor
}

export class SGD extends Optimizer<SGDHyper, SGDState> {
  /** Defaults as torch: lr 1e-3, momentum 0, dampening 0, weightDecay 0, nesterov false. */
  constructor(params: OptimizerParams<SGDHyper>, opts: SGDOptions = {}) {
    const o = options<SGDOptions>('SGD: options', opts)
    const defaults = { lr: o.lr ?? 1e-3, momentum: o.momentum ?? 0, dampening: o.dampening ?? 0, weightDecay: o.weightDecay ?? 0, nesterov: o.nesterov ?? false }
    checkSGD(defaults, 'SGD')
    super('SGD', params, defaults, o)
  }

  protected checkGroup(g: ParamGroup<SGDHyper>, where: string): void {
    checkSGD(g, where)
  }

  protected async update(p: Parameter, g: ParamGroup<SGDHyper>, s: SGDState | undefined): Promise<SGDState | undefined> {
    const args = { lr: g.lr, momentum: g.momentum, dampening: g.dampening, weightDecay: g.weightDecay, nesterov: g.nesterov }
    // The native call replaces an existing buffer in place, and returns a new one the first time.
    const created = (await p.native.sgdStep(p.name, s?.momentumBuffer ?? null, args)) as NativeTensor | null | undefined
    return created ? { momentumBuffer: created } : s
  }

  protected async saveState(s: SGDState, encode: (t: NativeTensor) => Promise<unknown> = encodeTensor): Promise<Record<string, unknown>> {
    return { momentum_buffer: await encode(s.momentumBuffer) }
  }

  protected loadState(raw: Record<string, unknown>, p: Parameter, where: string): SGDState {
    return { momentumBuffer: decodeTensor(`${where}.momentum_buffer`, raw.momentum_buffer, p.shape) }
  }
}

function checkSGD(g: Record<string, unknown>, where: string): void {
  nonNegative(`${where}.lr`, g.lr)
  nonNegative(`${where}.momentum`, g.momentum)
  // torch leaves dampening unchecked; outside [0, 1] it would flip or amplify the gradient.
  const d = g.dampening
  if (typeof d !== 'number' || !(d >= 0 && d <= 1)) throw new Error(`${where}.dampening: expected a number in [0, 1], found ${describe(d)}`)
  nonNegative(`${where}.weightDecay`, g.weightDecay)
  if (bool(`${where}.nesterov`, g.nesterov) && ((g.momentum as number) <= 0 || g.dampening !== 0)) {
    throw new Error(`${where}.nesterov: Nesterov momentum requires momentum > 0 and dampening 0, found momentum ${g.momentum} and dampening ${g.dampening}`)
  }
}
