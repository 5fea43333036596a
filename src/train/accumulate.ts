// One optimizer step's gradients over several micro-batches, normalised by the total number of
// target tokens (not by the number of micro-batches): the result equals the gradient of one
// big batch's mean loss. The native loss is a mean per micro-batch, so micro-batch i must
// count with weight w_i = n_i / N. With only `scaleGrads` natively, the accumulated gradient
// G is kept as S_i / w_i (S_i = sum of w_j g_j for j <= i): before micro-batch i, scale by
// w_{i-1} / w_i; backward adds g_i; after the last, scale by its w. (A native
// `Tensor.mul(scalar)` would let each loss be scaled before backward instead.)
import type { PeftModel } from '../peft'
import type { Batch } from '../data/batches'

export interface AccumulateResult {
  /** The token-weighted mean loss over all micro-batches. */
  loss: number
  targetTokens: number
  tokens: number
  /** Auxiliary loss terms (MixLoRA's `mixlora_balance`), token-weighted over the micro-batches as the loss. */
  auxLosses: Record<string, number>
}

export async function accumulateGradients(model: PeftModel, batches: Batch[], dropoutSeeds: number[], paramNames: string[]): Promise<AccumulateResult> {
  const native = model.baseModel.native
  const total = batches.reduce((n, b) => n + b.targetTokens, 0)
  if (total === 0) throw new Error('accumulateGradients: the micro-batches have no target tokens')
  let lossSum = 0
  let tokens = 0
  let prev = 0
  const aux: Record<string, number> = {}
  for (let i = 0; i < batches.length; i++) {
    const b = batches[i]
    if (b.targetTokens === 0) continue
    const w = b.targetTokens / total
    if (prev !== 0 && prev !== w) native.scaleGrads(paramNames, prev / w)
    // The loss alone: chunked over tokens, no [batch, seq, vocab] logits (model.ts `returnLogits`).
    const { loss } = await model.forward({
      inputIds: b.inputIds,
      attentionMask: b.attentionMask,
      labels: b.labels,
      dropoutSeed: dropoutSeeds[i],
      positionIds: b.positionIds,
      segmentIds: b.segmentIds,
      returnLogits: false,
    })
    const value = await loss.item()
    await loss.backward()
    loss.dispose()
    lossSum += value * b.targetTokens
    for (const [k, v] of Object.entries(model.auxLosses())) aux[k] = (aux[k] ?? 0) + (v * b.targetTokens) / total
    tokens += b.tokens
    prev = w
  }
  if (prev !== 1) native.scaleGrads(paramNames, prev)
  return { loss: lossSum / total, targetTokens: total, tokens, auxLosses: aux }
}
