// Multi-task composition from the survey (issue 16, part A) through the TS API: AdapterFusion
// over trained bottleneck adapters, MoLE over trained LoRAs (its gates in the training
// metrics), AdapterSoup's selection and weight average, and the new CLI names.
import test from 'ava'
import { join } from 'node:path'
import { AdaMixConfig, BottleneckAdapterConfig, LlamaModel, LoraConfig, LptConfig, PromptTuningConfig, Trainer, adapterSoup, examplesLoss, getPeftModel, loadData, type PeftModel } from '../src'
import type { LoraHubExample } from '../src'
import { METHODS, methodConfig } from '../src/cli/methods'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { snapshot, texts } from './helpers/train-data'
import { tempDir } from './helpers/temp'
import { cliTrain } from './helpers/cli-train'

const logits = async (peft: PeftModel) => (await peft.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()
const maxDiff = (a: Float64Array, b: Float64Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)

async function trainSteps(peft: PeftModel, steps: number, seed = 0): Promise<Record<string, number>[]> {
  const data = await loadData(texts(8), peft.tokenizer)
  const metrics: Record<string, number>[] = []
  const trainer = new Trainer(peft, { train: data.train, maxSteps: steps, batchSize: 2, learningRate: 1e-2, seed })
  trainer.on('step', (s) => metrics.push(s.auxLosses ?? {}))
  await trainer.train()
  return metrics
}

test('AdapterFusion over two bottleneck adapters: only Q, K, V train; it saves and loads alone', async (t) => {
  const adapter = new BottleneckAdapterConfig({ bottleneckSize: 8, sublayers: ['mlp'], initWeights: false })
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), adapter, { adapterName: 'a', seed: 1 })
  await peft.addAdapter('b', adapter, { seed: 2 })
  await peft.addComposedAdapter('adapter-fusion', ['a', 'b'], 'fusion')
  peft.setAdapter('fusion')
  const before = await snapshot(peft)
  t.deepEqual([...before.keys()].map((n) => n.replace(/.*\.(fusion_\w+)\.fusion\.weight$/, '$1')).sort(), [
    'fusion_key', 'fusion_key', 'fusion_query', 'fusion_query', 'fusion_value', 'fusion_value',
  ])
  await trainSteps(peft, 3)
  const after = await snapshot(peft)
  for (const [n, v] of before) t.true(maxDiff(Float64Array.from(v), Float64Array.from(after.get(n)!)) > 0, `${n} trained`)
  const trained = await logits(peft)
  const dir = tempDir(t, 'peft-node-fusion-')
  await peft.savePretrained(dir, { selectedAdapters: ['fusion'] })
  await peft.deleteAdapter('a')
  await peft.loadAdapter(join(dir, 'fusion'), 'reloaded')
  peft.setAdapter('reloaded')
  t.is(maxDiff(await logits(peft), trained), 0)
  await t.throwsAsync(peft.addComposedAdapter('adapter-fusion', ['b', 'fusion'], 'f2'), { message: /serial bottleneck adapters.*adapter `fusion` of peft_type "ADAPTER_FUSION"/ })
  peft.dispose()
})

test('MoLE over two LoRAs: the gates train, the LoRAs stay, and the mean gates are in the step metrics', async (t) => {
  const lora = new LoraConfig({ r: 4, targetModules: ['q_proj', 'v_proj'], initLoraWeights: false })
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), lora, { adapterName: 'a', seed: 1 })
  await peft.addAdapter('b', lora, { seed: 2 })
  await peft.addComposedAdapter('mole', ['a', 'b'], 'mole')
  peft.setAdapter('mole')
  t.true(peft.namedParameters({ trainableOnly: true }).every(([n]) => n.includes('.mole_gate.')))
  const steps = await trainSteps(peft, 3)
  t.is(steps.length, 3)
  for (const m of steps) {
    const g = [m['routing/mole.expert0'], m['routing/mole.expert1']]
    t.true(g.every((x) => x > 0 && x < 1) && Math.abs(g[0] + g[1] - 1) < 1e-6, `mean gates ${JSON.stringify(m)}`)
  }
  await t.throwsAsync(peft.addComposedAdapter('mole', ['a'], 'm2'), { message: /2 to 64 LoRA adapters/ })
  peft.dispose()
})

test('AdapterSoup averages the adapters with the lowest loss on the domain samples', async (t) => {
  const lora = new LoraConfig({ r: 4, targetModules: ['q_proj', 'v_proj'], initLoraWeights: false })
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), lora, { adapterName: 'far1', seed: 1 })
  await peft.addAdapter('far2', lora, { seed: 2 })
  await peft.addAdapter('near', lora, { seed: 3 })
  const { input_ids: ids, labels } = inputs()
  const examples: LoraHubExample[] = ids.map((inputIds, i) => ({ inputIds, labels: labels[i] }))
  const r = await adapterSoup(peft, { adapters: ['far1', 'far2', 'near'], examples, topK: 2 })
  t.is(r.selected.length, 2)
  const order = Object.entries(r.losses).sort((x, y) => x[1] - y[1]).map(([n]) => n)
  t.deepEqual(r.selected, order.slice(0, 2), `closest first: ${JSON.stringify(r.losses)}`)
  t.deepEqual(peft.activeAdapters, ['soup'])
  const params = new Map(peft.namedParameters())
  for (const [name, p] of params) {
    if (!name.includes('.soup.')) continue
    const parts = await Promise.all(r.selected.map((a) => params.get(name.replace('.soup.', `.${a}.`))!.data.toFloat64Array()))
    const mean = parts[0].map((x, i) => (x + parts[1][i]) / 2)
    t.true(maxDiff(await p.data.toFloat64Array(), mean) < 1e-6, `${name} is the mean`)
  }
  t.is(r.loss, await examplesLoss(peft, examples))
  await t.throwsAsync(adapterSoup(peft, { adapters: ['far1', 'near'], examples, topK: 3 }), { message: /topK: expected an integer in \[1, 2\]/ })
  peft.dispose()
})

test('SPoT: a prompt starts from a saved source prompt (initFrom); another length is refused naming both shapes', async (t) => {
  const source = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new PromptTuningConfig({ numVirtualTokens: 3 }), { seed: 1 })
  await trainSteps(source, 2)
  const dir = tempDir(t, 'peft-node-spot-')
  await source.savePretrained(dir)
  const prompt = async (p: PeftModel) => Float64Array.from(await p.namedParameters()[0][1].data.toFloat32Array())
  const target = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new PromptTuningConfig({ numVirtualTokens: 3, initFrom: dir }), { seed: 2 })
  t.is(maxDiff(await prompt(target), await prompt(source)), 0)
  const longer = getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new PromptTuningConfig({ numVirtualTokens: 4, initFrom: dir }))
  await t.throwsAsync(longer, { message: /init_from.*\[4, 64\].*\[3, 64\]/s })
  t.throws(() => new PromptTuningConfig({ numVirtualTokens: 3, initFrom: '' }), { message: /initFrom: expected the folder/ })
  source.dispose()
  target.dispose()
})

test('the new CLI names build configs the native core accepts', async (t) => {
  for (const name of ['adapter-fusion', 'mole', 'adamix', 'smop', 'idpg', 'prefix-propagation']) {
    t.truthy(METHODS[name], name)
    const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), methodConfig(name, name === 'adapter-fusion' || name === 'adamix' ? { bottleneckSize: 8 } : {}), { seed: 0 })
    t.is(peft.peftConfig.default.peft_type, METHODS[name].peftType, name)
    t.true(peft.namedParameters({ trainableOnly: true }).length > 0, name)
    peft.dispose()
  }
})

test('LPT: the CLI trains it by name; a layer the model lacks is refused naming insertion_layer', async (t) => {
  t.is(METHODS.lpt.peftType, 'LPT')
  const { config, metrics } = await cliTrain(t, 'lpt', ['--insertion-layer', '1'])
  t.is(config.peft_type, 'LPT')
  t.is(config.insertion_layer, 1)
  t.is(config.num_virtual_tokens, 5)
  t.regex(metrics, /"loss":/)
  const wrong = getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LptConfig({ numVirtualTokens: 2, insertionLayer: 2 }))
  await t.throwsAsync(wrong, { message: /insertion_layer.*below 2/ })
  t.throws(() => new LptConfig({ numVirtualTokens: 2, insertionLayer: -1 }), { message: /insertionLayer: expected an integer >= 0/ })
})

test('AdaMix: the consistency loss is in each training step\'s metrics; weight 0 turns it off', async (t) => {
  const run = async (consistencyWeight: number) => {
    const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new AdaMixConfig({ numExperts: 3, bottleneckSize: 8, initWeights: false, consistencyWeight }), { seed: 1 })
    const steps = await trainSteps(peft, 2)
    peft.dispose()
    return steps
  }
  for (const s of await run(1)) t.true(s.adamix_consistency > 0 && Number.isFinite(s.adamix_consistency), JSON.stringify(s))
  for (const s of await run(0)) t.false('adamix_consistency' in s, JSON.stringify(s))
  t.throws(() => new AdaMixConfig({ consistencyWeight: -1 }), { message: /consistencyWeight: expected a number >= 0/ })
})
