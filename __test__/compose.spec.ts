// Several adapters: PEFT's addWeightedAdapter through the TS API (every combination type,
// forward, save/load, errors) and LoRAHub's gradient-free composition on two tiny tasks.
import test from 'ava'
import { join } from 'node:path'
import { AdamW, IA3Config, LlamaModel, LoraConfig, PeftModel, cmaes, composeLoraHub, eigenSym, examplesLoss, getPeftModel, loraHub } from '../src'
import type { CombinationType, LoraHubExample } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const lora = (targetModules: string[], loraAlpha = 8) => new LoraConfig({ r: 4, loraAlpha, targetModules, initLoraWeights: false })

async function twoLoras(): Promise<PeftModel> {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), lora(['q_proj', 'v_proj']), { adapterName: 'a', seed: 1 })
  await peft.addAdapter('b', lora(['q_proj', 'k_proj'], 2), { seed: 2 })
  return peft
}

const logits = async (peft: PeftModel) => (await peft.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()
const maxDiff = (a: Float64Array, b: Float64Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)

test('cat with weights 1, 1 runs as both adapters at once, and saves and loads like any LoRA', async (t) => {
  const peft = await twoLoras()
  await peft.addWeightedAdapter(['a', 'b'], [1, 1], 'both', { combinationType: 'cat' })
  t.deepEqual(peft.activeAdapters, ['a'], 'added inactive')
  const cfg = peft.peftConfig.both
  t.is(cfg.r, 8)
  t.is(cfg.lora_alpha, 8)
  t.deepEqual(cfg.target_modules, ['q_proj', 'v_proj', 'k_proj'])
  peft.setAdapter(['a', 'b'])
  const together = await logits(peft)
  peft.setAdapter('both')
  const combined = await logits(peft)
  t.true(maxDiff(combined, together) < 1e-4, `${maxDiff(combined, together)}`)
  const dir = tempDir(t, 'peft-compose-')
  await peft.savePretrained(dir, { selectedAdapters: ['both'] })
  await peft.loadAdapter(join(dir, 'both'), 'reloaded')
  peft.setAdapter('reloaded')
  t.is(maxDiff(await logits(peft), combined), 0)
})

test('every combination type makes an adapter that changes the output', async (t) => {
  const peft = await twoLoras()
  peft.setAdapter('a')
  const base = await peft.withAdaptersDisabled(() => logits(peft))
  const kinds: CombinationType[] = ['svd', 'linear', 'cat', 'ties', 'ties_svd', 'dare_ties', 'dare_linear', 'dare_ties_svd', 'dare_linear_svd', 'magnitude_prune', 'magnitude_prune_svd']
  for (const kind of kinds) {
    const density = /ties|dare|magnitude/.test(kind) ? 0.6 : undefined
    await peft.addWeightedAdapter(['a', 'b'], [0.7, 0.3], kind, { combinationType: kind, density, seed: 3 })
    peft.setAdapter(kind)
    const out = await logits(peft)
    t.true(out.every(Number.isFinite), kind)
    t.true(maxDiff(out, base) > 1e-4, kind)
  }
  // DARE is reproducible by seed.
  await peft.addWeightedAdapter(['a', 'b'], [0.7, 0.3], 'dare_again', { combinationType: 'dare_linear', density: 0.6, seed: 3 })
  peft.setAdapter('dare_again')
  const again = await logits(peft)
  peft.setAdapter('dare_linear')
  t.is(maxDiff(again, await logits(peft)), 0)
})

test('incompatible adapters and bad arguments give errors naming what is wrong', async (t) => {
  const peft = await twoLoras()
  await peft.addAdapter('ia3', new IA3Config({ targetModules: ['k_proj'], feedforwardModules: [] }))
  await peft.addAdapter('r2', new LoraConfig({ r: 2, targetModules: ['q_proj'] }))
  const fails = async (adapters: string[], weights: number[], opts: object, parts: string[]) => {
    const e = await t.throwsAsync(() => peft.addWeightedAdapter(adapters, weights, 'new', opts))
    for (const p of parts) t.true(e!.message.includes(p), `${e!.message} should mention ${p}`)
  }
  await fails(['a', 'nope'], [1, 1], {}, ['"nope"', 'a, b'])
  await fails(['a', 'ia3'], [1, 1], {}, ['LoRA adapters only', '`ia3`', 'IA3'])
  await fails(['a', 'b'], [1], {}, ['weights', 'one weight per adapter'])
  await fails(['a', 'r2'], [1, 1], { combinationType: 'linear' }, ['one rank', '`r2` with r = 2'])
  await fails(['a', 'b'], [1, 1], { combinationType: 'ties' }, ['density', '(0, 1]'])
  await fails(['a', 'b'], [1, 1], { combinationType: 'dare_ties', density: 1.5 }, ['density', '1.5'])
  await fails(['a', 'b'], [1, 1], { svdRank: 100 }, ['svd_rank', 'at most'])
  await fails(['a', 'b'], [1, 1], { svdRank: -1 }, ['svdRank', 'an integer in 1..4294967295'])
  await fails(['a', 'b'], [1, 1], { combinationType: 'mean' }, ['combination_type', '"mean"'])
  t.false(peft.adapterNames.includes('new'))
})

test('cmaes minimises a shifted quadratic in a box, reproducibly; eigenSym reconstructs', async (t) => {
  const f = async (x: number[]) => (x[0] - 0.3) ** 2 + 4 * (x[1] + 0.7) ** 2 + (x[0] + x[1] - x[2]) ** 2
  const o = { x0: [0, 0, 0], sigma0: 0.5, lower: -1.5, upper: 1.5, budget: 300, seed: 5 }
  const r = await cmaes(f, o)
  t.is(r.evaluations, 300)
  t.true(r.bestValue < 1e-4, `${r.bestValue}`)
  t.deepEqual((await cmaes(f, o)).best, r.best)
  const C = [
    [4, 1, 0.5],
    [1, 3, 0.2],
    [0.5, 0.2, 2],
  ]
  const { B, D } = eigenSym(C)
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) t.true(Math.abs(B[i].reduce((s, b, k) => s + b * D[k] ** 2 * B[j][k], 0) - C[i][j]) < 1e-12)
})

/** Examples of one tiny task: a text the tokenizer encodes, cut in overlapping windows. */
function task(peft: PeftModel, text: string): LoraHubExample[] {
  const ids = peft.tokenizer!.encode(text.repeat(4), { addSpecialTokens: false })
  return Array.from({ length: 6 }, (_, i) => ids.slice(i * 3, i * 3 + 16)).map((w) => ({ inputIds: w, labels: w }))
}

async function train(peft: PeftModel, name: string, examples: LoraHubExample[]): Promise<void> {
  peft.setAdapter(name)
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 0.02, weightDecay: 0 })
  const batch = { inputIds: examples.map((e) => e.inputIds), labels: examples.map((e) => e.labels) }
  for (let i = 0; i < 30; i++) {
    opt.zeroGrad()
    const { loss } = await peft.forward(batch)
    await loss!.backward()
    await opt.step()
  }
  opt.zeroGrad()
}

test('LoRAHub finds weights better than the uniform composition, reproducibly, without gradients', async (t) => {
  const config = () => new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'] })
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), config(), { adapterName: 't1', seed: 1 })
  await peft.addAdapter('t2', config(), { seed: 2 })
  const task1 = task(peft, 'the quick brown fox jumps over the lazy dog. ')
  const task2 = task(peft, 'all work and no play makes jack a dull boy; ')
  await train(peft, 't1', task1)
  await train(peft, 't2', task2)
  const few = task1.slice(0, 4)
  const hub = await loraHub(peft, { adapters: ['t1', 't2'], examples: few, maxSteps: 40, seed: 7 })
  t.is(hub.evaluations, 40)
  t.deepEqual(peft.activeAdapters, ['lorahub'])
  t.true(Math.abs((await examplesLoss(peft, few)) - hub.loss) < 1e-6, 'the adapter is left at the best weights')
  await composeLoraHub(peft, ['t1', 't2'], [0.5, 0.5], 'uniform')
  peft.setAdapter('uniform')
  const uniform = await examplesLoss(peft, few)
  t.log(`LoRAHub loss ${hub.loss.toFixed(4)} at w = [${hub.weights.map((w) => w.toFixed(3)).join(', ')}]; uniform ${uniform.toFixed(4)}`)
  t.true(hub.loss < uniform, `LoRAHub ${hub.loss} (w = ${hub.weights.join(', ')}) vs uniform ${uniform}`)
  t.true(hub.weights.every((w) => Math.abs(w) <= 1.5))
  const again = await loraHub(peft, { adapters: ['t1', 't2'], examples: few, maxSteps: 40, seed: 7, adapterName: 'again' })
  t.deepEqual(again.weights, hub.weights)
  t.true(peft.parameters().every((p) => p.grad === null), 'inference forwards only: no gradient anywhere')

  for (const bad of [{ sigma0: 0 }, { sigma0: Number.NaN }, { bound: -1 }, { l1: -0.1 }] as const) {
    const key = Object.keys(bad)[0]
    await t.throwsAsync(loraHub(peft, { adapters: ['t1', 't2'], examples: few, ...bad }), { message: new RegExp(`^${key}: expected`) })
  }
})
