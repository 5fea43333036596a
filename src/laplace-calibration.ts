// Held-out calibration of next-token predictions, MAP against Laplace-LoRA: the mean negative
// log-likelihood of the label tokens, and the expected calibration error over 10 equal-width bins
// of the argmax confidence (Guo et al. 2017, eq. 3: Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|).
import type { PeftModel } from './peft'
import type { LaplacePosterior, LaplacePredictMethod } from './laplace'
import { collate } from './data/batches'
import { IGNORE, targetCount, type TokenizedExample } from './data/tokenize'

export interface CalibrationScores {
  /** Mean negative log-likelihood of the label tokens (nats). */
  nll: number
  /** Expected calibration error of the argmax, 10 bins. */
  ece: number
  accuracy: number
  tokens: number
}

export interface CalibrationOptions {
  batchSize?: number
  maxBatches?: number
  padTokenId?: number
  /** Posterior samples for the Laplace predictive ("mc" over the whole vocabulary; default 8). */
  samples?: number
  seed?: number
}

/** ECE over `bins` equal-width confidence bins. */
export function expectedCalibrationError(confidence: number[], correct: boolean[], bins = 10): number {
  const n = confidence.length
  const sum = Array.from({ length: bins }, () => ({ count: 0, conf: 0, hits: 0 }))
  confidence.forEach((c, i) => {
    const b = sum[Math.min(bins - 1, Math.floor(c * bins))]
    b.count++
    b.conf += c
    b.hits += correct[i] ? 1 : 0
  })
  return sum.reduce((e, b) => (b.count === 0 ? e : e + (b.count / n) * Math.abs(b.hits / b.count - b.conf / b.count)), 0)
}

/** NLL and ECE of `method` ("map" or "mc") on the label tokens of `examples`. */
export async function calibration(peft: PeftModel, posterior: LaplacePosterior, examples: TokenizedExample[], method: LaplacePredictMethod, o: CalibrationOptions = {}): Promise<CalibrationScores> {
  const bs = o.batchSize ?? 4
  const conf: number[] = []
  const correct: boolean[] = []
  let nll = 0
  const usable = examples.filter((e) => targetCount(e.labels) > 0)
  if (usable.length === 0) throw new Error('calibration: no example has a label token')
  for (let s = 0, n = 0; s < usable.length && (o.maxBatches === undefined || n < o.maxBatches); s += bs, n++) {
    const b = collate(usable.slice(s, s + bs), o.padTokenId ?? 0)
    // position p predicts label p + 1
    const positions = b.labels.map((row) => row.flatMap((l, p) => (p > 0 && l !== IGNORE ? [p - 1] : [])))
    const keep = positions.map((r) => r.length > 0)
    const rows = (xs: number[][]) => xs.filter((_, i) => keep[i])
    const out = await posterior.predict(rows(b.inputIds), { attentionMask: rows(b.attentionMask), positions: rows(positions), method, samples: o.samples ?? 8, seed: o.seed ?? 0 })
    out.positions.forEach(([r, p], i) => {
      const probs = out.probs[i]
      const label = rows(b.labels)[r][p + 1]
      let arg = 0
      for (let k = 1; k < probs.length; k++) if (probs[k] > probs[arg]) arg = k
      nll -= Math.log(Math.max(probs[label], 1e-30))
      conf.push(probs[arg])
      correct.push(arg === label)
    })
  }
  const tokens = conf.length
  return { nll: nll / tokens, ece: expectedCalibrationError(conf, correct), accuracy: correct.filter(Boolean).length / tokens, tokens }
}
