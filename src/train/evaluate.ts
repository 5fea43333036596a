// Validation loss (the token-weighted mean over the set) and perplexity, in eval mode.
import type { PeftModel } from '../peft'
import { collate } from '../data/batches'
import { targetCount, type TokenizedExample } from '../data/tokenize'

export interface EvalResult {
  loss: number
  perplexity: number
  targetTokens: number
}

export interface EvalOptions {
  batchSize?: number
  /** At most this many batches (default: all). */
  maxBatches?: number
  padTokenId?: number
}

export async function evaluate(model: PeftModel, examples: TokenizedExample[], o: EvalOptions = {}): Promise<EvalResult> {
  if (examples.length === 0) throw new Error('evaluate: the dataset is empty')
  const bs = o.batchSize ?? 4
  // Sorted by length (stable), so batches pad little; the order never depends on a seed.
  const order = examples.map((e, i) => [e, i] as const).sort((a, b) => a[0].inputIds.length - b[0].inputIds.length || a[1] - b[1])
  const native = model.baseModel.native
  const wasTraining = native.training
  model.eval()
  let sum = 0
  let count = 0
  try {
    for (let s = 0, n = 0; s < order.length && (o.maxBatches === undefined || n < o.maxBatches); s += bs, n++) {
      const exs = order.slice(s, s + bs).map(([e]) => e).filter((e) => targetCount(e.labels) > 0)
      if (exs.length === 0) continue
      const b = collate(exs, o.padTokenId ?? 0)
      const { logits, loss } = await model.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask, labels: b.labels })
      sum += (await loss!.item()) * b.targetTokens
      count += b.targetTokens
      loss!.dispose()
      logits.dispose()
    }
  } finally {
    if (wasTraining) model.train()
  }
  const loss = sum / count
  return { loss, perplexity: Math.exp(loss), targetTokens: count }
}
