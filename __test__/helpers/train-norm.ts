// The norm-weight training loop used by the worker and packaging specs: forward with labels,
// backward, check the gradient, and a plain SGD update (no optimizer needed).
import type { LlamaModel } from '../../src'

export interface StepReport {
  step: number
  loss: number
  gradNorm: number
}

export const NORM = 'model.norm.weight'

export async function trainNorm(model: LlamaModel, ids: number[], steps = 3, onStep?: (r: StepReport) => void): Promise<StepReport[]> {
  const param = model.namedParameters().find(([n]) => n === NORM)![1]
  param.requiresGrad = true
  const out: StepReport[] = []
  for (let step = 0; step < steps; step++) {
    const { logits, loss } = await model.forward({ inputIds: [ids], labels: [ids] })
    const value = await loss!.item()
    if (!Number.isFinite(value)) throw new Error(`step ${step}: loss ${value}`)
    await loss!.backward()
    const grad = param.grad
    if (!grad) throw new Error(`step ${step}: no gradient for ${NORM}`)
    const g = await grad.toFloat32Array()
    const w = await param.data.toFloat32Array()
    model.native.setParamData(NORM, Float64Array.from(w, (x, i) => x - 0.5 * g[i]))
    model.zeroGrad()
    logits.dispose()
    loss!.dispose()
    const r = { step, loss: value, gradNorm: Math.hypot(...g) }
    out.push(r)
    onStep?.(r)
  }
  return out
}
