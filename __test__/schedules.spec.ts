import test from 'ava'
import { AdamW, LRScheduler, LlamaModel, constantSchedule, cosineSchedule, linearSchedule, type Schedule } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'

// Expected values computed by hand from transformers' optimization.py formulas.
function close(t: { true(v: boolean, m?: string): void }, s: Schedule, table: [number, number][]): void {
  for (const [step, want] of table) t.true(Math.abs(s(step) - want) < 1e-12, `step ${step}: ${s(step)} vs ${want}`)
}

test('constant: linear warmup from 0, then 1', (t) => {
  close(t, constantSchedule({ warmupSteps: 4 }), [[0, 0], [1, 0.25], [3, 0.75], [4, 1], [1000, 1]])
  close(t, constantSchedule(), [[0, 1], [5, 1]])
})

test('linear: warmup, then down to 0 at totalSteps, and 0 after', (t) => {
  close(t, linearSchedule({ warmupSteps: 2, totalSteps: 10 }), [[0, 0], [1, 0.5], [2, 1], [6, 0.5], [9, 0.125], [10, 0], [12, 0]])
  close(t, linearSchedule({ totalSteps: 4 }), [[0, 1], [1, 0.75], [4, 0]])
})

test('cosine: warmup, half a cosine to 0 (numCycles 0.5), unclamped after the end as in transformers', (t) => {
  close(t, cosineSchedule({ warmupSteps: 2, totalSteps: 10 }), [
    [0, 0], [1, 0.5], [2, 1],
    [4, 0.5 * (1 + Math.SQRT1_2)], // progress 0.25: 0.8535533905932737
    [6, 0.5],
    [8, 0.5 * (1 - Math.SQRT1_2)], // 0.14644660940672627
    [10, 0],
    [14, 0.5], // progress 1.5: cos(1.5π) = 0
  ])
  close(t, cosineSchedule({ totalSteps: 8, numCycles: 1 }), [[0, 1], [2, 0.5], [4, 0], [8, 1]])
  t.true(Math.abs(cosineSchedule({ warmupSteps: 2, totalSteps: 10 })(4) - 0.8535533905932737) < 1e-15)
})

test('schedule arguments are validated', (t) => {
  t.throws(() => constantSchedule({ warmupSteps: -1 }), { message: /constantSchedule: warmupSteps: expected an integer >= 0, found -1/ })
  t.throws(() => linearSchedule({ warmupSteps: 1.5, totalSteps: 10 }), { message: /linearSchedule: warmupSteps: expected an integer >= 0, found 1\.5/ })
  t.throws(() => linearSchedule({} as any), { message: /linearSchedule: totalSteps: expected an integer >= 0, found undefined/ })
  t.throws(() => cosineSchedule({ totalSteps: 10, numCycles: -1 }), { message: /cosineSchedule: numCycles: expected a finite number >= 0, found -1/ })
  t.throws(() => cosineSchedule({ totalSteps: 10 })(-1), { message: /cosineSchedule: step: expected a finite number >= 0, found -1/ })
})

test('LRScheduler drives each group lr from its initial lr, and its state round-trips', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const [a, b] = model.namedParameters().filter(([n]) => n.includes('norm')).map(([, p]) => p)
  a.requiresGrad = true
  b.requiresGrad = true
  const opt = new AdamW([{ params: [a], lr: 0.1 }, { params: [b] }], { lr: 0.01 })
  const sched = new LRScheduler(opt, linearSchedule({ warmupSteps: 2, totalSteps: 4 }))
  t.deepEqual(sched.getLastLr(), [0, 0], 'step 0 of a warmup runs at lr 0, as transformers')
  t.deepEqual(opt.paramGroups.map((g) => g.initialLr), [0.1, 0.01])
  const before = await a.data.toFloat32Array()
  const { loss } = await model.forward({ inputIds: inputs().input_ids, labels: inputs().labels })
  await loss!.backward()
  await opt.step()
  t.deepEqual(await a.data.toFloat32Array(), before, 'lr 0: unchanged')
  const seen: number[][] = []
  for (let i = 0; i < 4; i++) {
    sched.step()
    seen.push(sched.getLastLr())
  }
  t.deepEqual(seen, [[0.05, 0.005], [0.1, 0.01], [0.05, 0.005], [0, 0]])
  t.deepEqual(opt.paramGroups.map((g) => g.lr), [0, 0])
  await opt.step()
  const saved = JSON.parse(JSON.stringify({ opt: await opt.stateDict(), sched: sched.stateDict() }))
  t.deepEqual(saved.sched, { last_epoch: 4, base_lrs: [0.1, 0.01], _last_lr: [0, 0] })
  t.deepEqual(saved.opt.param_groups.map((g: any) => g.initial_lr), [0.1, 0.01])
  // Resume: a fresh optimizer and scheduler continue from step 4.
  const opt2 = new AdamW([{ params: [a], lr: 0.1 }, { params: [b] }], { lr: 0.01 })
  opt2.loadStateDict(saved.opt)
  const sched2 = new LRScheduler(opt2, linearSchedule({ warmupSteps: 2, totalSteps: 4 }))
  sched2.loadStateDict(saved.sched)
  t.is(sched2.lastStep, 4)
  t.deepEqual(opt2.paramGroups.map((g) => g.lr), [0, 0])
  // One schedule per group.
  const per = new LRScheduler(opt2, [constantSchedule(), linearSchedule({ totalSteps: 2 })])
  per.step()
  t.deepEqual(per.getLastLr(), [0.1, 0.005])
  model.dispose()
})

test('LRScheduler arguments are validated', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const [, p] = model.namedParameters()[0]
  const opt = new AdamW([p])
  t.throws(() => new LRScheduler({} as any, constantSchedule()), { message: /LRScheduler: optimizer: expected an optimizer/ })
  t.throws(() => new LRScheduler(opt, [constantSchedule(), constantSchedule()]), { message: /expected one schedule or 1 \(one per group\), found 2/ })
  t.throws(() => new LRScheduler(opt, () => NaN), { message: /LRScheduler: schedule\[0\]\(0\) returned NaN; expected a finite multiplier >= 0/ })
  const s = new LRScheduler(opt, constantSchedule())
  t.throws(() => s.loadStateDict({ last_epoch: 1, base_lrs: [1, 2], _last_lr: [] }), { message: /base_lrs: expected 1 finite numbers >= 0 \(one per group\), found \[1, 2\]/ })
  model.dispose()
})
