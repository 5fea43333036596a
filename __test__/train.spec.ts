// The trainer on the tiny fixture model: loss goes down, token-normalised accumulation equals one
// big batch, events/steps()/metrics/SVG, evaluation, AbortSignal, keeping the last K checkpoints.
import test from 'ava'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { Trainer, accumulateGradients, collate, loadData, readMetrics, type StepInfo } from '../src'
import { completions, snapshot, texts, tinyLora } from './helpers/train-data'
import { tempDir } from './helpers/temp'

test('LoRA training lowers the loss; events, steps(), metrics.jsonl, the final adapter and loss.svg', async (t) => {
  const peft = await tinyLora()
  const data = await loadData(texts(16), peft.tokenizer, { validSplit: 4 })
  const out = tempDir(t)
  const trainer = new Trainer(peft, { train: data.train, valid: data.valid, output: out, epochs: 6, batchSize: 4, learningRate: 1e-2, evalEvery: 3, lrSchedule: 'cosine', warmupSteps: 2 })
  t.is(trainer.totalSteps, 18)
  const seen: string[] = []
  for (const ev of ['step', 'eval', 'save', 'end']) trainer.on(ev, () => seen.push(ev))
  const steps: StepInfo[] = []
  for await (const s of trainer.steps()) steps.push(s)
  t.deepEqual(steps.map((s) => s.step), Array.from({ length: 18 }, (_, i) => i + 1))
  t.is(steps[0].lr, 0, 'warmup starts at lr 0')
  t.true(steps[2].lr > steps[17].lr)
  const mean = (xs: StepInfo[]) => xs.reduce((a, s) => a + s.loss, 0) / xs.length
  t.true(mean(steps.slice(-3)) < mean(steps.slice(0, 3)) - 0.5, `loss ${mean(steps.slice(0, 3))} -> ${mean(steps.slice(-3))}`)
  t.true(steps.every((s) => s.tokens > 0 && s.tokensPerSecond > 0 && Number.isFinite(s.gradNorm) && s.etaMs >= 0))
  t.is(seen.filter((e) => e === 'eval').length, 6)
  t.is(seen.at(-1), 'end')
  const metrics = readMetrics(join(out, 'metrics.jsonl'))
  t.is(metrics.filter((m) => m.type === 'train').length, 18)
  const evals = metrics.filter((m) => m.type === 'eval')
  t.true(evals.every((e) => Math.abs((e.perplexity as number) - Math.exp(e.loss as number)) < 1e-9))
  t.true((evals.at(-1)!.loss as number) < (evals[0].loss as number))
  t.true(existsSync(join(out, 'adapter_model.safetensors')) && existsSync(join(out, 'adapter_config.json')))
  t.regex(readFileSync(join(out, 'loss.svg'), 'utf8'), /^<svg[^]*<polyline[^]*<circle/)
  t.deepEqual(readdirSync(join(out, 'checkpoints')), ['step-00000018'])
  peft.dispose()
})

test('gradient accumulation is normalised by target tokens: 2 micro-batches of 2 = one batch of 4', async (t) => {
  const peft = await tinyLora()
  const { train } = await loadData(completions(4), peft.tokenizer)
  const exs = train.examples
  t.notDeepEqual(collate(exs.slice(0, 2), 2).targetTokens, collate(exs.slice(2), 2).targetTokens, 'unequal token counts')
  const names = peft.namedParameters({ trainableOnly: true }).map(([, p]) => p.name)
  // A nonzero B makes every LoRA gradient nonzero.
  for (const [, p] of peft.namedParameters({ trainableOnly: true })) {
    const v = await p.data.toFloat32Array()
    p.setData(v.map((x, i) => (x === 0 ? 0.01 * Math.sin(i) : x)))
  }
  const grads = async () => new Map(await Promise.all(peft.namedParameters({ trainableOnly: true }).map(async ([n, p]) => [n, await p.grad!.toFloat32Array()] as const)))
  const one = await accumulateGradients(peft, [collate(exs, 2)], [0], names)
  const g1 = await grads()
  peft.zeroGrad()
  const two = await accumulateGradients(peft, [collate(exs.slice(0, 2), 2), collate(exs.slice(2), 2)], [0, 0], names)
  const g2 = await grads()
  t.true(Math.abs(one.loss - two.loss) < 1e-5, `${one.loss} vs ${two.loss}`)
  let worst = 0
  let scale = 0
  for (const [n, a] of g1) a.forEach((x, i) => ((worst = Math.max(worst, Math.abs(x - g2.get(n)![i]))), (scale = Math.max(scale, Math.abs(x)))))
  t.log(`max |g1 - g2| ${worst.toExponential(2)} (max |g| ${scale.toExponential(2)})`)
  t.true(worst < 1e-5 * scale)
  peft.dispose()
})

test('an AbortSignal stops after the current step and saves a checkpoint; the last K are kept', async (t) => {
  const peft = await tinyLora()
  const { train } = await loadData(texts(12), peft.tokenizer)
  const out = tempDir(t)
  const ac = new AbortController()
  const trainer = new Trainer(peft, { train, output: out, maxSteps: 50, batchSize: 2, saveEvery: 2, saveTotalLimit: 2, signal: ac.signal })
  trainer.on('step', (s: StepInfo) => s.step === 7 && ac.abort())
  const end = await trainer.train()
  t.is(end.reason, 'aborted')
  t.is(end.step, 7)
  t.deepEqual(readdirSync(join(out, 'checkpoints')), ['step-00000006', 'step-00000007'])
  t.is(end.checkpoint, join(out, 'checkpoints', 'step-00000007'))
  t.true(existsSync(join(out, 'adapter_model.safetensors')))
  peft.dispose()
})

test('bad trainer options are clear errors', async (t) => {
  const peft = await tinyLora()
  const { train } = await loadData(texts(4), peft.tokenizer)
  t.throws(() => new Trainer(peft, { train, batchSize: 0 }), { message: /batchSize: expected an integer >= 1, found 0/ })
  t.throws(() => new Trainer(peft, { train, gradientAccumulationSteps: 0 }), { message: /gradientAccumulationSteps/ })
  t.throws(() => new Trainer(peft, { train: [] }), { message: /train: the dataset is empty/ })
  t.throws(() => new Trainer(peft, { train, saveEvery: 2 }), { message: /saveEvery: checkpoints need an `output` folder/ })
  t.throws(() => new Trainer(peft, { train, packing: true }), { message: /packing: needs `maxSeqLength`/ })
  t.throws(() => new Trainer(peft, { train, evalEvery: 2 }), { message: /evalEvery: evaluation needs a validation set/ })
  t.throws(() => new Trainer(peft, { train, lrSchedule: 'step' as 'linear' }), { message: /lrSchedule/ })
  peft.dispose()
})

test('the same seed gives the same run; evaluate() without a validation set says so', async (t) => {
  const run = async () => {
    const peft = await tinyLora({ loraDropout: 0.2 })
    const { train } = await loadData(texts(8), peft.tokenizer)
    const trainer = new Trainer(peft, { train, maxSteps: 3, batchSize: 2, learningRate: 1e-2 })
    await trainer.train()
    await t.throwsAsync(trainer.evaluate(), { message: /no validation set/ })
    const s = await snapshot(peft)
    peft.dispose()
    return s
  }
  t.deepEqual(await run(), await run())
})

test('packing: packed rows give each example the loss it has alone, and training runs', async (t) => {
  const peft = await tinyLora()
  const { train } = await loadData(completions(6), peft.tokenizer)
  // One packed batch holding every example vs each example alone: the token-weighted loss matches.
  const packed = new Trainer(peft, { train, packing: true, maxSeqLength: 256, batchSize: 8, maxSteps: 1 })
  const alone = await Promise.all(
    train.examples.map(async (ex) => {
      const b = collate([ex], 0)
      const { loss } = await peft.forward({ inputIds: b.inputIds, labels: b.labels })
      return { loss: await loss!.item(), n: b.targetTokens }
    }),
  )
  const expected = alone.reduce((a, x) => a + x.loss * x.n, 0) / alone.reduce((a, x) => a + x.n, 0)
  const [step] = await (async () => {
    const out: StepInfo[] = []
    for await (const s of packed.steps()) out.push(s)
    return out
  })()
  t.true(Math.abs(step.loss - expected) < 1e-4, `packed ${step.loss} vs alone ${expected}`)
  peft.dispose()
})
