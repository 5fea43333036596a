// One mechanism for the methods' rules between optimizer steps (issue 15): the Trainer calls
// `beforeStep` and `afterStep` whatever the method, and a loop of one's own that calls
// `afterStep` after `opt.step()` trains exactly as the Trainer does.
import test from 'ava'
import { AdamW, LlamaModel, LoraConfig, SoraConfig, Trainer, getPeftModel, loadData, type PeftModel } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { texts } from './helpers/train-data'

async function trainable(peft: PeftModel): Promise<Map<string, Float64Array>> {
  const out = new Map<string, Float64Array>()
  for (const [name, p] of peft.namedParameters({ trainableOnly: true })) out.set(name, await p.data.toFloat64Array())
  return out
}

test('SoRA: a loop of your own that calls afterStep after opt.step() gives the Trainer\'s parameters and kept ranks', async (t) => {
  // λ·lr = 0.2 per step: gates (init 1) are pruned within the 8 steps unless their gradient holds them.
  const config = () => new SoraConfig({ r: 4, sparseLambda: 20, targetModules: ['q_proj'] })
  const [byTrainer, byHand] = [await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), config(), { seed: 1 }), await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), config(), { seed: 1 })]
  t.teardown(() => [byTrainer, byHand].forEach((p) => p.dispose()))
  const data = await loadData(texts(8), byTrainer.tokenizer)
  const opts = { train: data.train, maxSteps: 8, batchSize: 2, learningRate: 1e-2, lrSchedule: 'constant', maxGradNorm: 0 } as const

  const trainerRanks: number[] = []
  const trainer = new Trainer(byTrainer, opts)
  trainer.on('step', (s) => trainerRanks.push(s.soraRanks?.default ?? NaN))
  await trainer.train()

  // The same batches in the same order (a Trainer's stream, never trained with), then the loop
  // the README shows: forward, backward, step, afterStep, zeroGrad.
  const stream = new Trainer(byHand, opts).stream
  byHand.train()
  const opt = new AdamW(byHand.parameters({ trainableOnly: true }), { lr: 1e-2, weightDecay: 0 })
  const handRanks: number[] = []
  for (let step = 0; step < 8; step++) {
    const b = stream.next()
    const { loss } = await byHand.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask, labels: b.labels, returnLogits: false })
    await loss.backward()
    await opt.step()
    const report = await byHand.afterStep({ step, lr: 1e-2 })
    t.deepEqual(report.periodicStages, [])
    t.deepEqual(report.resetState, [])
    handRanks.push(report.soraRanks.find((k) => k.adapter === 'default')?.kept ?? NaN)
    opt.zeroGrad()
  }

  t.deepEqual(handRanks, trainerRanks)
  t.true(handRanks[7] < 8, `the rule ran: gates pruned ${handRanks}`)
  const [a, b] = [await trainable(byTrainer), await trainable(byHand)]
  t.deepEqual([...b.keys()], [...a.keys()])
  for (const [name, x] of a) {
    const diff = x.reduce((m, v, i) => Math.max(m, Math.abs(v - b.get(name)![i])), 0)
    t.true(diff <= 1e-6, `${name}: max |Trainer − own loop| ${diff}`)
  }
})

test('afterStep and beforeStep do nothing for a method without a rule, and check their arguments', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LoraConfig({ r: 2, targetModules: ['q_proj'] }))
  t.teardown(() => peft.dispose())
  const before = await trainable(peft)
  const empty = { adaloraBudget: null, soraRanks: [], periodicStages: [], resetState: [], maskUpdates: [] }
  t.deepEqual(await peft.afterStep({ step: 4, lr: 1e-3, seed: 9 }), empty)
  t.deepEqual(await peft.beforeStep(0, [{ inputIds: [[1, 2, 3]], labels: [[2, 3, -100]] }]), empty)
  t.deepEqual(await trainable(peft), before, 'no parameter changed')
  t.deepEqual(peft.checkSchedule(10, false), [])
  t.throws(() => peft.afterStep({ step: 1.5, lr: 0 }), { message: /afterStep: step: expected an integer >= 0, found 1.5/ })
  t.throws(() => peft.afterStep({ step: 0, lr: Number.NaN }), { message: /afterStep: lr: expected a finite number >= 0/ })
  t.throws(() => peft.beforeStep(-1, []), { message: /beforeStep: step: expected an integer >= 0/ })
})
