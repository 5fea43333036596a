// AdamW as torch.optim.AdamW (decoupled weight decay, bias-corrected moments, eps after the
// square root). The per-element math is one native call per parameter (`adamwStep`); the
// moments are f32 native tensors this object owns, and `step` counts per parameter as torch's
// state['step'] does (a parameter without a gradient does not advance).
import type { Parameter } from '../parameter'
import type { NativeTensor } from '../native'
import { Optimizer, type OptimizerOptions, type ParamGroup } from './optimizer'
import type { OptimizerParams } from './params'
import { decodeTensor, encodeTensor } from './codec'
import { betas, describe, nonNegative, nonNegativeInt, options } from './validate'

export interface AdamWHyper {
  lr: number
  betas: [number, number]
  eps: number
  weightDecay: number
}

export type AdamWOptions = Partial<AdamWHyper> & OptimizerOptions

interface AdamWState {
  step: number
  expAvg: NativeTensor
  expAvgSq: NativeTensor
}

export class AdamW extends Optimizer<AdamWHyper, AdamWState> {
  /** Defaults as torch: lr 1e-3, betas [0.9, 0.999], eps 1e-8, weightDecay 0.01. */
  constructor(params: OptimizerParams<AdamWHyper>, opts: AdamWOptions = {}) {
    const o = options<AdamWOptions>('AdamW: options', opts)
    const defaults = { lr: o.lr ?? 1e-3, betas: o.betas ?? [0.9, 0.999], eps: o.eps ?? 1e-8, weightDecay: o.weightDecay ?? 0.01 }
    checkAdamW(defaults, 'AdamW')
    super('AdamW', params, { ...defaults, betas: [defaults.betas[0], defaults.betas[1]] }, o)
  }

  protected checkGroup(g: ParamGroup<AdamWHyper>, where: string): void {
    checkAdamW(g, where)
  }

  protected async update(p: Parameter, g: ParamGroup<AdamWHyper>, s: AdamWState | undefined): Promise<AdamWState> {
    const st = s ?? { step: 0, expAvg: p.native.zerosState(p.name) as NativeTensor, expAvgSq: p.native.zerosState(p.name) as NativeTensor }
    const step = st.step + 1
    const [beta1, beta2] = g.betas
    await p.native.adamwStep(p.name, st.expAvg, st.expAvgSq, { lr: g.lr, beta1, beta2, eps: g.eps, weightDecay: g.weightDecay, step })
    st.step = step // only once the native step succeeded
    return st
  }

  protected async saveState(s: AdamWState, encode: (t: NativeTensor) => Promise<unknown> = encodeTensor): Promise<Record<string, unknown>> {
    return { step: s.step, exp_avg: await encode(s.expAvg), exp_avg_sq: await encode(s.expAvgSq) }
  }

  protected loadState(raw: Record<string, unknown>, p: Parameter, where: string): AdamWState {
    const step = nonNegativeInt(`${where}.step`, raw.step)
    for (const k of ['exp_avg', 'exp_avg_sq']) if (!(k in raw)) throw new Error(`${where}: expected an "${k}" tensor, found keys ${describe(Object.keys(raw))}`)
    return { step, expAvg: decodeTensor(`${where}.exp_avg`, raw.exp_avg, p.shape), expAvgSq: decodeTensor(`${where}.exp_avg_sq`, raw.exp_avg_sq, p.shape) }
  }
}

function checkAdamW(g: Record<string, unknown>, where: string): void {
  nonNegative(`${where}.lr`, g.lr)
  betas(`${where}.betas`, g.betas)
  nonNegative(`${where}.eps`, g.eps)
  nonNegative(`${where}.weightDecay`, g.weightDecay)
}
