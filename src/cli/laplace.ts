// `peft-node laplace`: Laplace-LoRA on a trained LoRA adapter, as laplace-torch is used after
// training (`Laplace(model, ...).fit(train_loader)`, then `optimize_prior_precision`): fit the
// Kronecker-factored posterior on the training data, choose λ by the marginal likelihood (or take
// --prior-precision), write laplace_state.safetensors + laplace_config.json into the adapter
// folder, and report held-out NLL and ECE of MAP against Laplace. `train --method laplace-lora`
// trains LoRA and then runs the same fit with the defaults.
import { PeftModel } from '../peft'
import { loadData, type LoadedData } from '../data/dataset'
import { collate } from '../data/batches'
import { targetCount, type TokenizedExample } from '../data/tokenize'
import { calibration } from '../laplace-calibration'
import { trainOptions } from './config'
import { loadModel, required } from './load'
import type { Io } from './io'

export const LAPLACE_OPTIONS = [
  'model', 'adapter', 'config', 'data', 'output', 'batchSize', 'maxSeqLength', 'maskPrompt', 'validSplit', 'seed',
  'hessian', 'priorPrecision', 'maxFactorSide', 'factorRank', 'fitBatches', 'evalBatches', 'samples', 'revision', 'adapterRevision', 'file',
]

const num = (v: unknown) => (v === undefined ? undefined : Number(v))

export interface LaplaceCliOptions {
  hessian?: 'fisher' | 'empirical'
  priorPrecision?: number
  maxFactorSide?: number
  factorRank?: number
  fitBatches?: number
  evalBatches?: number
  samples?: number
  batchSize?: number
  seed?: number
}

function batchesOf(examples: TokenizedExample[], bs: number, limit: number | undefined, padId: number) {
  const usable = examples.filter((e) => targetCount(e.labels) > 0)
  const out = []
  for (let s = 0; s < usable.length && (limit === undefined || out.length < limit); s += bs) out.push(collate(usable.slice(s, s + bs), padId))
  return out
}

/** Fits on `data.train`, saves into `output`, and compares MAP and Laplace on `data.valid` when there is one. */
export async function fitAndReport(peft: PeftModel, data: LoadedData, output: string, o: LaplaceCliOptions, io: Io, signal?: AbortSignal): Promise<void> {
  const padId = peft.tokenizer?.padToken?.id ?? 0
  const bs = o.batchSize ?? 4
  const batches = batchesOf(data.train.examples, bs, o.fitBatches, padId)
  peft.eval()
  const t0 = Date.now()
  const posterior = await peft.fitLaplace(batches, {
    hessian: o.hessian, priorPrecision: o.priorPrecision, maxFactorSide: o.maxFactorSide, factorRank: o.factorRank, seed: o.seed, signal,
    onBatch: (done, total) => io.err(`laplace: batch ${done}/${total}`),
  })
  const s = posterior.summary
  io.out(`laplace: ${s.hessian} K-FAC over ${s.tokens} tokens (${batches.length} batches, ${((Date.now() - t0) / 1000).toFixed(1)}s); factors above ${s.maxFactorSide} kept at rank ${s.factorRank}`)
  io.out(`laplace: prior precision ${s.priorPrecision.toPrecision(4)} (${o.priorPrecision === undefined ? 'marginal likelihood' : 'given'}), log marginal likelihood ${s.logMarginalLikelihood.toFixed(2)}`)
  await posterior.save(output)
  io.out(`laplace: posterior saved in ${output} (laplace_state.safetensors, laplace_config.json)`)
  if (!data.valid) return
  const opts = { batchSize: bs, maxBatches: o.evalBatches, padTokenId: padId, samples: o.samples ?? 8, seed: o.seed }
  const map = await calibration(peft, posterior, data.valid.examples, 'map', opts)
  const lap = await calibration(peft, posterior, data.valid.examples, 'mc', opts)
  io.out(`held-out (${map.tokens} tokens): MAP NLL ${map.nll.toFixed(4)} ECE ${map.ece.toFixed(4)} acc ${map.accuracy.toFixed(3)} | Laplace (${opts.samples} samples) NLL ${lap.nll.toFixed(4)} ECE ${lap.ece.toFixed(4)} acc ${lap.accuracy.toFixed(3)}`)
}

export function laplaceOptions(o: Record<string, unknown>): LaplaceCliOptions {
  const hessian = o.hessian === undefined ? undefined : String(o.hessian)
  if (hessian !== undefined && hessian !== 'fisher' && hessian !== 'empirical') throw new Error(`--hessian: expected fisher or empirical, found ${hessian}`)
  return {
    hessian: hessian as LaplaceCliOptions['hessian'], priorPrecision: num(o.priorPrecision), maxFactorSide: num(o.maxFactorSide), factorRank: num(o.factorRank),
    fitBatches: num(o.fitBatches), evalBatches: num(o.evalBatches), samples: num(o.samples), batchSize: num(o.batchSize), seed: num(o.seed),
  }
}

export async function laplaceCommand(flags: Record<string, unknown>, io: Io, signal?: AbortSignal): Promise<void> {
  const o = trainOptions(flags)
  const adapter = required(o, 'adapter', 'the trained LoRA adapter folder')
  const dataPath = required(o, 'data', 'a JSONL file, or a folder with train.jsonl (fit) and valid.jsonl (held-out report)')
  const lo = laplaceOptions(o)
  const model = await loadModel(o, io)
  if (!(model instanceof PeftModel)) throw new Error('--adapter: expected a LoRA adapter folder')
  try {
    const data = await loadData(dataPath, model.tokenizer, { maxSeqLength: num(o.maxSeqLength), maskPrompt: o.maskPrompt as boolean | undefined, validSplit: num(o.validSplit), seed: num(o.seed) })
    await fitAndReport(model, data, typeof o.output === 'string' ? o.output : adapter, lo, io, signal)
  } finally {
    model.dispose()
  }
}
