// Laplace-LoRA (issue 16) through the TS API and the CLI, on the tiny model: fit off the JS
// thread, predict (GLM over a target set, Monte Carlo over the vocabulary, MAP), save and load
// with identical predictions, abort between batches, clear errors, and `train --method laplace-lora`.
import test from 'ava'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { IA3Config, LlamaModel, LoraConfig, PeftModel, getPeftModel } from '../src'
import { expectedCalibrationError } from '../src/laplace-calibration'
import { main } from '../src/cli/main'
import { capture } from './helpers/cli'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { completions, writeJsonl } from './helpers/train-data'
import { tempDir } from './helpers/temp'

const inp = inputs()
const batch = (r: number) => ({ inputIds: [inp.input_ids[r]], attentionMask: [inp.attention_mask[r]], labels: [inp.labels[r]] })

async function trained(): Promise<PeftModel> {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LoraConfig({ r: 4, targetModules: ['q_proj', 'v_proj'], initLoraWeights: false }), { seed: 1 })
  peft.eval()
  return peft
}

test('fitLaplace: a posterior with a fitted prior; GLM and MC differ from MAP and save/load predicts the same', async (t) => {
  const peft = await trained()
  const seen: number[] = []
  const post = await peft.fitLaplace([batch(0), batch(1)], { onBatch: (done) => seen.push(done), maxFactorSide: 32, factorRank: 6 })
  t.deepEqual(seen, [1, 2])
  const s = post.summary
  t.like(s, { adapter: 'default', hessian: 'fisher', tokens: 25, maxFactorSide: 32, factorRank: 6 })
  t.true(Number.isFinite(s.priorPrecision) && s.priorPrecision > 0, `λ = ${s.priorPrecision}`)
  t.true(Number.isFinite(s.logMarginalLikelihood))
  const ids = inp.input_ids
  const opts = { attentionMask: inp.attention_mask, positions: [[3, 7], [5]], targetTokens: [10, 20, 30] }
  const glm = await peft.laplacePredict(ids, opts)
  const map = await peft.laplacePredict(ids, { ...opts, method: 'map' })
  t.deepEqual(glm.positions, [[0, 3], [0, 7], [1, 5]])
  t.deepEqual(glm.tokens, [10, 20, 30])
  t.is(glm.probs.length, 3)
  for (const p of glm.probs) t.true(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-5)
  t.true(glm.logitVariance!.every((v) => v.every((x) => x > 0)))
  t.true(glm.probs.some((p, i) => p.some((x, k) => Math.abs(x - map.probs[i][k]) > 1e-5)), 'the posterior changes the predictive')
  const mc = await peft.laplacePredict(ids, { attentionMask: inp.attention_mask, samples: 3 })
  t.deepEqual(mc.positions, [[0, 15], [1, 8]], 'default: the last attended token of each row')
  t.is(mc.probs[0].length, 384)

  const dir = tempDir(t, 'laplace-')
  await peft.savePretrained(dir)
  await post.save(dir)
  t.true(existsSync(join(dir, 'laplace_state.safetensors')))
  t.is(JSON.parse(readFileSync(join(dir, 'laplace_config.json'), 'utf8')).prior_precision, s.priorPrecision)
  const again = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), dir)
  again.loadLaplace(dir)
  t.deepEqual(await again.laplacePredict(ids, opts), glm)
  t.deepEqual(await again.laplacePredict(ids, { attentionMask: inp.attention_mask, samples: 3 }), mc)
  again.dispose()
  peft.dispose()
})

test('fitLaplace stops between batches on an AbortSignal', async (t) => {
  const peft = await trained()
  const ac = new AbortController()
  await t.throwsAsync(peft.fitLaplace([batch(0), batch(1), batch(0)], { signal: ac.signal, onBatch: (done) => done === 1 && ac.abort(new Error('stop here')) }), { message: 'stop here' })
  peft.dispose()
})

test('Laplace-LoRA errors name the argument', async (t) => {
  const peft = await trained()
  await t.throwsAsync(peft.fitLaplace([]), { message: /batches: expected a non-empty array/ })
  await t.throwsAsync(peft.fitLaplace([batch(0)], { hessian: 'ggn' as 'fisher' }), { message: /hessian/ })
  await t.throwsAsync(peft.fitLaplace([batch(0)], { priorPrecision: 0 }), { message: /priorPrecision/ })
  await t.throwsAsync(peft.fitLaplace([{ ...batch(0), labels: [[999, ...inp.labels[0].slice(1)]] }]), { message: /batches\[0\]\.labels/ })
  t.throws(() => peft.laplacePredict(inp.input_ids), { message: /no Laplace posterior.*fitLaplace/ })
  await peft.fitLaplace([batch(0)], { priorPrecision: 1 })
  await t.throwsAsync(peft.laplacePredict(inp.input_ids, { method: 'glm' }), { message: /targetTokens/ })
  await t.throwsAsync(peft.laplacePredict(inp.input_ids, { targetTokens: [384] }), { message: /targetTokens/ })
  await t.throwsAsync(peft.laplacePredict(inp.input_ids, { positions: [16] }), { message: /positions\[0\]\[0\]/ })
  await t.throwsAsync(peft.laplacePredict(inp.input_ids, { positions: [[1]] }), { message: /positions: expected one list per row/ })
  peft.dispose()
  const ia3 = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new IA3Config({ targetModules: ['q_proj'], feedforwardModules: [] }))
  await t.throwsAsync(ia3.fitLaplace([batch(0)]), { message: /IA3 adapter.*LoRA/ })
  ia3.dispose()
})

test('expected calibration error: 10 bins of |accuracy − confidence|', (t) => {
  // bin 9: confidence 0.95, accuracy 0.5; bin 5: confidence 0.55, accuracy 1; half the tokens each
  t.true(Math.abs(expectedCalibrationError([0.95, 0.95, 0.55, 0.55], [true, false, true, true]) - 0.45) < 1e-12)
  t.is(expectedCalibrationError([1, 1], [true, true]), 0)
})

test('the CLI: train --method laplace-lora fits after training; laplace refits a saved adapter', async (t) => {
  const data = join(tempDir(t, 'laplace-cli-'), 'data')
  mkdirSync(data)
  writeJsonl(join(data, 'train.jsonl'), completions(8))
  writeJsonl(join(data, 'valid.jsonl'), completions(4))
  const out = join(tempDir(t, 'laplace-cli-'), 'adapter')
  let io = capture()
  let code = await main(['train', '--model', MODEL_DIR, '--batch-size', '2', '--learning-rate', '1e-2', '--data', data, '--steps', '2', '--output', out, '--method', 'laplace-lora'], io)
  t.is(code, 0, io.errors())
  t.regex(io.text(), /laplace: prior precision [0-9.e+-]+ \(marginal likelihood\)/)
  t.regex(io.text(), /held-out \(\d+ tokens\): MAP NLL [0-9.]+ ECE [0-9.]+ .*\| Laplace \(8 samples\) NLL [0-9.]+ ECE/)
  t.true(existsSync(join(out, 'laplace_config.json')) && existsSync(join(out, 'adapter_model.safetensors')))
  io = capture()
  code = await main(['laplace', '--model', MODEL_DIR, '--adapter', out, '--data', data, '--hessian', 'empirical', '--prior-precision', '2', '--samples', '2'], io)
  t.is(code, 0, io.errors())
  t.regex(io.text(), /laplace: empirical K-FAC .* prior precision 2\.000 \(given\)/s)
  t.is(JSON.parse(readFileSync(join(out, 'laplace_config.json'), 'utf8')).hessian, 'empirical')
  io = capture()
  t.is(await main(['laplace', '--model', MODEL_DIR, '--adapter', out, '--data', data, '--hesian', 'fisher'], io), 1)
  t.regex(io.errors(), /--hesian: not an option of `laplace` \(did you mean --hessian\?\)/)
})
