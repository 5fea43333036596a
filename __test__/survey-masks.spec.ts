// The sparse methods whose mask a procedure rewrites during training, through the Trainer (issue
// 16, part B): FAR chooses its FFN nodes when priming ends, LT-SFT draws its ticket when full
// fine-tuning ends, Fish-Dip recomputes its Fisher mask every N steps; each is reported in the
// step metrics, and the CLI trains each by name. Structured diff pruning reports its L0 penalty.
import test from 'ava'
import { FarConfig, FishDipConfig, LlamaModel, LtSftConfig, SDiffPruningConfig, Trainer, getPeftModel, loadData, type PeftConfig, type StepInfo } from '../src'
import { METHODS, methodConfig } from '../src/cli/methods'
import { cliTrain } from './helpers/cli-train'
import { MODEL_DIR } from './helpers/fixtures'
import { texts } from './helpers/train-data'

async function trainSteps(config: PeftConfig, steps: number) {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), config, { seed: 1 })
  const data = await loadData(texts(8), peft.tokenizer)
  const infos: StepInfo[] = []
  const trainer = new Trainer(peft, { train: data.train, maxSteps: steps, batchSize: 2, learningRate: 1e-2, lrSchedule: 'constant' })
  trainer.on('step', (s) => infos.push(s))
  await trainer.train()
  const masks: Float64Array[] = []
  for (const [name, p] of peft.namedParameters()) if (name.includes('delta_mask')) masks.push(await p.data.toFloat64Array())
  return { peft, infos, masks }
}

const ones = (m: Float64Array[]) => m.reduce((n, x) => n + x.filter((v) => v === 1).length, 0)

test('FAR: the Trainer chooses the FFN nodes when priming ends, and only they keep training', async (t) => {
  const { peft, infos, masks } = await trainSteps(new FarConfig({ trainableRatio: 0.1, primingSteps: 2 }), 4)
  t.deepEqual(infos.map((s) => s.maskUpdates?.default), [undefined, { kept: 32, total: 320 }, undefined, undefined], '16 of 160 nodes in each of 2 layers')
  // gate/up [160, 64]: 16 full rows; down [64, 160]: 16 full columns; 3 projections per layer.
  t.is(ones(masks), 2 * 3 * 16 * 64)
  t.throws(() => peft.maskProcedureStep(-1), { message: /stepsDone: expected an integer >= 0/ })
  peft.dispose()
})

test('LT-SFT: the ticket is drawn when full fine-tuning ends; only the ticket retrains', async (t) => {
  const { peft, infos, masks } = await trainSteps(new LtSftConfig({ density: 0.05, fullSteps: 2, targetModules: ['q_proj'] }), 4)
  t.deepEqual(infos.map((s) => s.maskUpdates?.default), [undefined, { kept: 2 * 205, total: 2 * 4096 }, undefined, undefined])
  t.is(ones(masks), 410)
  const deltas = []
  for (const [name, p] of peft.namedParameters()) if (name.includes('masked_delta')) deltas.push(await p.data.toFloat64Array())
  // The change is ΔW ⊙ mask (AdamW's moments from phase 1 may still move ΔW outside the mask, unseen).
  const change = deltas.map((d, i) => d.map((v, j) => v * masks[i][j]))
  t.true(change.some((d) => d.some((v) => v !== 0)), 'phase 2 trained')
  peft.dispose()
})

test('Fish-Dip: the Trainer recomputes the Fisher mask every updateEvery steps from the training batches', async (t) => {
  const { peft, infos, masks } = await trainSteps(new FishDipConfig({ density: 0.05, updateEvery: 2, targetModules: ['q_proj'] }), 5)
  const updated = infos.map((s) => s.maskUpdates?.default)
  t.deepEqual(updated, [0, 2, 4].reduce((u, i) => ((u[i] = { kept: 410, total: 8192 }), u), Array<{ kept: number; total: number } | undefined>(5).fill(undefined)))
  t.is(ones(masks), 410)
  t.throws(() => peft.fishDipUpdate(0, []), { message: /batches/ })
  peft.dispose()
})

test('the CLI trains FAR, LT-SFT and Fish-Dip by name, each with its procedure', async (t) => {
  for (const name of ['far', 'lt-sft', 'fish-dip']) t.truthy(METHODS[name], name)
  t.is(methodConfig('lt-sft', {}).toJSON().peft_type, 'LT_SFT')
  for (const [method, extra] of [['far', ['--priming-steps', '1']], ['lt-sft', ['--full-steps', '1']], ['fish-dip', ['--update-every', '1']]] as const) {
    const { metrics, config } = await cliTrain(t, method, [...extra])
    t.is(config.peft_type, METHODS[method].peftType)
    t.regex(metrics, /"maskUpdates":\{"default":\{"kept":\d+,"total":\d+\}\}/, method)
  }
})

test('structured diff pruning: the L0 penalty is in each training step\'s loss and metrics; the CLI trains it by name', async (t) => {
  const { peft, infos } = await trainSteps(new SDiffPruningConfig({ l0Lambda: 0.5, targetModules: ['q_proj'] }), 2)
  // λ · the expected share of open rows (log α = 1 at init: σ(1 + 2/3·ln 11) ≈ 0.931), moving little in 2 steps; summed over 2 layers.
  for (const s of infos) t.true(Math.abs(s.auxLosses!.s_diff_pruning_l0 - 2 * 0.5 * 0.931) < 0.02, `${s.auxLosses?.s_diff_pruning_l0}`)
  peft.dispose()
  const { metrics } = await cliTrain(t, 's-diff-pruning', ['--target-modules', 'q_proj'])
  t.regex(metrics, /"auxLosses":\{"s_diff_pruning_l0":[0-9.e-]+\}/)
})
