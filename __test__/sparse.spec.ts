// SPARSE_MASK through the TS API: a Fisher estimate chooses the mask, the model is left as it
// was, the adapter round-trips without the scores, and bad densities name `density`.
import test from 'ava'
import { LlamaModel, PeftModel, RawPeftConfig, SparseMaskConfig, estimateFisher, getPeftModel } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const Q0 = 'model.layers.0.self_attn.q_proj'
const batches = () => [
  { inputIds: inputs().input_ids, attentionMask: inputs().attention_mask, labels: inputs().labels },
  { inputIds: [[40, 41, 42, 43, 44]], labels: [[40, 41, 42, 43, 44]] },
]

/** The k largest scores' indices, ties to the lower index, ascending (by a full sort). */
function topK(scores: Float64Array, k: number): number[] {
  const order = Array.from(scores.keys()).sort((a, b) => scores[b] - scores[a] || a - b)
  return order.slice(0, k).sort((a, b) => a - b)
}

test('estimateFisher scores the targeted weights and leaves the model as it was', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const fisher = await estimateFisher(model, batches(), { targetModules: ['q_proj', 'v_proj'] })
  t.deepEqual(fisher.modules, ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj'])
  const s = await fisher.get(Q0)!.toFloat64Array()
  t.is(s.length, 64 * 64)
  t.true(s.every((x) => x >= 0 && Number.isFinite(x)) && s.some((x) => x > 0))
  t.is(fisher.get('lm_head'), undefined)
  for (const p of model.native.parameters()) t.false(p.requiresGrad || p.hasGrad, `${p.name} left trainable or with a gradient`)
  model.dispose()
})

test('a Fisher mask keeps the highest scores, trains, and loads back without the scores', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const fisher = await estimateFisher(model, batches(), { targetModules: ['q_proj'] })
  const peft = await getPeftModel(model, new SparseMaskConfig({ density: 0.02, targetModules: ['q_proj'], fisher }))
  t.deepEqual(peft.warnings, [])
  const params = new Map(peft.namedParameters())
  const idx = await params.get(`base_model.model.${Q0}.sparse_indices.default`)!.data.toFloat64Array()
  t.deepEqual(Array.from(idx), topK(await fisher.get(Q0)!.toFloat64Array(), Math.round(0.02 * 4096)))
  const trainable = peft.namedParameters({ trainableOnly: true }).map(([n]) => n)
  t.deepEqual(trainable, [`base_model.model.${Q0}.sparse_delta.default`, 'base_model.model.model.layers.1.self_attn.q_proj.sparse_delta.default'])
  fisher.dispose() // the adapter keeps only its indices
  t.throws(() => fisher.modules, { message: /disposed/ })

  const { loss } = await peft.forward(batches()[0])
  await loss!.backward()
  for (const [name, p] of peft.namedParameters({ trainableOnly: true })) {
    const g = await p.grad!.toFloat64Array()
    t.true(g.every(Number.isFinite) && g.every((x) => x !== 0), `${name}: a finite non-zero gradient on every masked entry`)
  }
  peft.zeroGrad()

  const delta = params.get(`base_model.model.${Q0}.sparse_delta.default`)!
  delta.setData(Float64Array.from({ length: 82 }, (_, i) => 0.01 * ((i % 7) - 3)))
  const logits = await (await peft.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()
  const dir = tempDir(t, 'peft-node-sparse-')
  await peft.savePretrained(dir)
  const back = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), dir)
  t.deepEqual(await (await back.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array(), logits)
  back.dispose()
  peft.dispose()
})

test('a density outside (0, 1] is an error naming density', async (t) => {
  for (const density of [0, 1.5, -0.1, Number.NaN, undefined]) {
    t.throws(() => new SparseMaskConfig({ density } as never), { message: /^density: expected a number in \(0, 1\]/ }, String(density))
  }
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  // The native check, for configs that skip the TS one (a raw adapter_config.json).
  const e = await t.throwsAsync(getPeftModel(model, new RawPeftConfig({ peft_type: 'SPARSE_MASK', density: 1.5 })))
  t.regex(e!.message, /`density`.*\(0, 1\].*1\.5/)
  const f = await t.throwsAsync(getPeftModel(model, new SparseMaskConfig({ density: 0.1, maskType: 'fisher' })))
  t.regex(f!.message, /`mask_type`.*estimateFisher/)
  const peft = await getPeftModel(model, new SparseMaskConfig({ density: 1, targetModules: ['q_proj'], sparsitySchedule: 'cubic' }))
  t.true(peft.warnings.some((w) => w.includes('sparsity_schedule')), peft.warnings.join('; '))
  model.dispose()
})
