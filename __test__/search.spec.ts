// The configuration search (src/search/): the Pareto front, seeded determinism, the parameter
// budget, the JSONL log, cancellation, argument errors, and issue 16's "done when": on the tiny
// model the search finds a configuration that beats uniform LoRA at the same budget.
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AdamW, LlamaModel, applySearchConfig, checkSearchConfig, evaluateSearchConfig, layerGroups, loadData, paretoFront, searchPeftConfig, uniformConfig, type LoadedData, type SearchResult } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { completions } from './helpers/train-data'
import { tempDir } from './helpers/temp'

const TRAINER = { learningRate: 1e-2, batchSize: 4, memoryCheck: false }

async function setup(): Promise<{ model: LlamaModel; data: LoadedData }> {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const recs = completions(48)
  return { model, data: await loadData({ train: recs.slice(0, 32), valid: recs.slice(32) }, model.tokenizer) }
}

const summary = (r: SearchResult) => r.trials.map((t) => [JSON.stringify(t.config), t.params, t.trainLoss, t.valLoss])

test('paretoFront keeps the non-dominated points by increasing parameters', (t) => {
  const pts = [
    { id: 'a', params: 100, valLoss: 3 },
    { id: 'b', params: 200, valLoss: 2 },
    { id: 'c', params: 150, valLoss: 3.5 }, // dominated by a
    { id: 'd', params: 300, valLoss: 2 }, // dominated by b (same loss, more parameters)
    { id: 'e', params: 400, valLoss: 1 },
    { id: 'f', params: 100, valLoss: 3 }, // equal to a: the first is kept
    { id: 'g', params: 50, valLoss: NaN }, // never on the front
    { id: 'h', params: 500, valLoss: 1.5 }, // dominated by e
  ]
  t.deepEqual(paretoFront(pts).map((p) => p.id), ['a', 'b', 'e'])
  t.deepEqual(paretoFront([]), [])
})

test('a seed gives the same trials; another seed other ones', async (t) => {
  const { model, data } = await setup()
  const run = (seed: number) => searchPeftConfig({ model, data, budget: 1792, trials: 4, steps: 5, seed, trainer: TRAINER })
  const a = await run(3)
  const b = await run(3)
  t.is(a.trials.length, 4)
  t.deepEqual(summary(a), summary(b))
  t.notDeepEqual(summary(await run(4)).map((s) => s[0]), summary(a).map((s) => s[0]))
  model.dispose()
})

test('no trial exceeds the budget; over-budget candidates are logged, never trained; the log is valid JSONL', async (t) => {
  const { model, data } = await setup()
  const log = join(tempDir(t), 'trials.jsonl')
  const seen: number[] = []
  const r = await searchPeftConfig({ model, data, budget: 900, trials: 6, steps: 3, seed: 1, log, trainer: TRAINER, onTrial: (x) => seen.push(x.trial) })
  t.is(r.trials.length, 6)
  t.deepEqual(seen, [0, 1, 2, 3, 4, 5])
  t.true(r.trials.every((x) => x.params <= 900 && x.params > 0))
  t.true(r.rejected > 0, 'a 900-parameter budget rejects some draws (a bottleneck of 32 alone has ~8k)')
  const lines = readFileSync(log, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
  const trials = lines.filter((l) => l.type === 'trial')
  const rejected = lines.filter((l) => l.type === 'rejected')
  t.is(lines.length, trials.length + rejected.length, 'every line is a trial or a rejection')
  t.is(trials.length, 6)
  t.is(rejected.length, r.rejected)
  for (const l of trials) {
    for (const k of ['params', 'trainLoss', 'valLoss', 'seconds']) t.true(Number.isFinite(l[k]), `${k} of ${JSON.stringify(l)}`)
    checkSearchConfig(l.config, 'log', 2)
  }
  for (const l of rejected) {
    t.true((l.params as number) > 900)
    t.false('valLoss' in l)
  }
  t.deepEqual(r.front, paretoFront(r.trials))
  t.is(r.best, r.front.at(-1)!)
  t.true(r.trials.every((x) => x.valLoss >= r.best!.valLoss))
  model.dispose()
})

test('applySearchConfig builds every adapter, all active, with the counted parameters; unload leaves the base', async (t) => {
  const { model } = await setup()
  const config = { groups: [{ layers: [0], method: 'bottleneck' as const, size: 2 }, { layers: [1], method: 'lora' as const, size: 2 }], prefixLength: 1, loraTargets: ['q_proj', 'v_proj'] }
  const peft = await applySearchConfig(model, config)
  t.deepEqual(peft.activeAdapters, ['g0_bottleneck', 'g1_lora', 'prefix'])
  // LoRA r=2 on layer 1's q (64->64) and v (64->32): 2·(64+64) + 2·(64+32) = 448; the prefix: 1 token × 2 layers × (k, v) × 32 = 128.
  t.true(peft.targetedModules('g1_lora').every((m) => m.includes('layers.1.')))
  const lora = peft.namedParameters({ trainableOnly: true }).filter(([n]) => n.includes('lora_')).reduce((s, [, p]) => s + p.shape.reduce((a, b) => a * b, 1), 0)
  t.is(lora, 448)
  peft.unload()
  const again = await applySearchConfig(model, uniformConfig(layerGroups(2, 2), 'lora', 4))
  t.is(again.trainableParameterCounts().trainable, 1792, 'uniform LoRA r=4 on q,v of 2 layers')
  t.deepEqual(again.adapterNames.sort(), ['g0_lora', 'g1_lora'], 'the first configuration left nothing behind')
  again.dispose()
})

test('the signal stops the search between trials; aborted before, it rejects and trains nothing', async (t) => {
  const { model, data } = await setup()
  const ac = new AbortController()
  const r = await searchPeftConfig({ model, data, budget: 1792, trials: 10, steps: 3, seed: 0, trainer: TRAINER, signal: ac.signal, onTrial: (x) => x.trial === 1 && ac.abort() })
  t.is(r.reason, 'aborted')
  t.is(r.trials.length, 2)
  // Mid-trial: the 5th optimizer step overall (trial 2 of 3-step trials) aborts; the Trainer stops
  // after that step and the half-trained trial is dropped.
  const mid = new AbortController()
  let stepsDone = 0
  const optimizer = (params: ConstructorParameters<typeof AdamW>[0]) => {
    const opt = new AdamW(params, { lr: 1e-2 })
    const step = opt.step.bind(opt)
    opt.step = async () => {
      const result = await step()
      if (++stepsDone === 5) mid.abort()
      return result
    }
    return opt
  }
  const m = await searchPeftConfig({ model, data, budget: 1792, trials: 10, steps: 3, seed: 0, trainer: { ...TRAINER, optimizer }, signal: mid.signal })
  t.is(m.reason, 'aborted')
  t.is(stepsDone, 5, 'no step after the abort')
  t.is(m.trials.length, 1)
  const log = join(tempDir(t), 'never.jsonl')
  await t.throwsAsync(searchPeftConfig({ model, data, budget: 1792, trials: 2, seed: 0, signal: ac.signal, log }), { any: true, name: 'AbortError' })
  t.false(existsSync(log), 'nothing was started')
  const peft = await applySearchConfig(model, uniformConfig(layerGroups(2, 1), 'ia3', 0))
  t.deepEqual(peft.adapterNames, ['g0_ia3'], 'no adapter of the stopped search is left on the model')
  peft.dispose()
})

test('bad arguments are refused with the argument named', async (t) => {
  const { model, data } = await setup()
  const base = { model, data, budget: 1000, trials: 2 }
  const refused = async (o: object, message: RegExp) => t.throwsAsync(searchPeftConfig({ ...base, ...o } as never), { message }, JSON.stringify(o))
  await refused({ budget: 0 }, /^budget: expected an integer >= 1, found 0/)
  await refused({ trials: 1.5 }, /^trials: expected an integer >= 1/)
  await refused({ steps: -1 }, /^steps: expected an integer >= 1/)
  await refused({ seed: 'x' }, /^seed: expected an integer >= 0/)
  await refused({ model: {} }, /^model: expected a LlamaModel/)
  await refused({ space: { groups: 3 } }, /^space\.groups: expected an integer in \[1, 2\]/)
  await refused({ space: { methods: ['dora'] } }, /^space\.methods: expected a non-empty list of none, lora, bottleneck, ia3/)
  await refused({ space: { loraRanks: [0] } }, /^space\.loraRanks: expected a non-empty list of integers >= 1/)
  await refused({ space: { methods: ['none'], prefixLengths: [0] } }, /^space: only `none` and no prefix length above 0/)
  await refused({ space: { ranks: [2] } }, /^space\.ranks: not a field of the search space/)
  await refused({ data: { train: data.train, valid: null } }, /^data\.valid: the search scores configurations on a validation set/)
  await refused({ log: 42 }, /^log: expected a file path/)
  t.throws(() => checkSearchConfig({ groups: [{ layers: [0, 5], method: 'lora', size: 2 }], prefixLength: 0, loraTargets: ['q_proj'] }, 'best.json', 2), { message: /^best\.json\.groups\[0\]\.layers: expected layer indices in \[0, 1\], found 5/ })
  t.throws(() => checkSearchConfig({ groups: [{ layers: [0], method: 'lora', size: 0 }], prefixLength: 0, loraTargets: ['q_proj'] }, 'best.json', 2), { message: /^best\.json\.groups\[0\]\.size: expected an integer >= 1/ })
  await t.throwsAsync(applySearchConfig(model, uniformConfig(layerGroups(2, 2), 'none', 0)), { message: /nothing to train/ })
  model.dispose()
})

// Issue 16, done when: 30 trials of 30 steps each against uniform LoRA (r = 4 on q_proj and v_proj
// in both layers) trained the same way; the budget is that LoRA's parameter count. Two seeds.
test('the search beats uniform LoRA at the same parameter budget on the tiny model', async (t) => {
  const { model, data } = await setup()
  const steps = 30
  const uniform = await evaluateSearchConfig({ model, data, steps, seed: 0, trainer: TRAINER, config: uniformConfig(layerGroups(2, 2), 'lora', 4) })
  t.truthy(uniform)
  for (const seed of [0, 1]) {
    const r = await searchPeftConfig({ model, data, budget: uniform!.params, trials: 30, steps, seed, trainer: TRAINER })
    t.log(`seed ${seed}: best ${r.best!.valLoss.toFixed(4)} with ${r.best!.params} parameters (${JSON.stringify(r.best!.config.groups.map((g) => `${g.method}${g.size}`))}, prefix ${r.best!.config.prefixLength}); uniform LoRA ${uniform!.valLoss.toFixed(4)} with ${uniform!.params}`)
    t.true(r.best!.params <= uniform!.params)
    t.true(r.best!.valLoss < uniform!.valLoss, `seed ${seed}`)
  }
  model.dispose()
})
