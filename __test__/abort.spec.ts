// An AbortSignal that is already aborted rejects at once with its reason (an AbortError by
// default), before any native work: generate used to produce a token first, and the Trainer
// ran a whole step and saved a checkpoint.
import test from 'ava'
import { existsSync, readdirSync } from 'node:fs'
import { LlamaModel, Trainer, loadData } from '../src'
import { main } from '../src/cli/main'
import { MODEL_DIR } from './helpers/fixtures'
import { capture } from './helpers/cli'
import { tempDir } from './helpers/temp'
import { completions, texts, tinyLora, writeJsonl } from './helpers/train-data'
import { join } from 'node:path'

function aborted(reason?: unknown): AbortSignal {
  const ac = new AbortController()
  ac.abort(reason)
  return ac.signal
}

test('generate and stream with an aborted signal reject with an AbortError and produce nothing', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  await t.throwsAsync(model.generate([1, 2, 3], { maxNewTokens: 4, signal: aborted() }), { any: true, name: 'AbortError' })
  await t.throwsAsync(model.generate([[1, 2, 3]], { maxNewTokens: 4, signal: aborted() }), { any: true, name: 'AbortError' })
  const got: number[] = []
  await t.throwsAsync(async () => {
    for await (const id of model.stream([1, 2, 3], { maxNewTokens: 4, signal: aborted() })) got.push(id)
  }, { any: true, name: 'AbortError' })
  t.deepEqual(got, [], 'no token was generated')
  const reason = new Error('user cancelled')
  t.is(await t.throwsAsync(model.generate([1, 2, 3], { signal: aborted(reason) })), reason, 'the signal’s own reason')
  t.is((await model.generate([1, 2, 3], { maxNewTokens: 2, signal: new AbortController().signal, stopTokenIds: [] })).length, 5, 'a live signal still generates')
  model.dispose()
})

test('Trainer.train() with an aborted signal rejects with an AbortError: no step, nothing written', async (t) => {
  const peft = await tinyLora()
  const { train } = await loadData(texts(8), peft.tokenizer)
  const out = join(tempDir(t), 'run')
  const trainer = new Trainer(peft, { train, output: out, maxSteps: 3, batchSize: 2, signal: aborted() })
  let steps = 0
  trainer.on('step', () => steps++)
  await t.throwsAsync(trainer.train(), { any: true, name: 'AbortError' })
  t.is(steps, 0)
  t.is(trainer.step, 0)
  t.false(existsSync(out) && readdirSync(out).length > 0, 'no checkpoint, adapter or metrics')
  peft.dispose()
})

test('peft-node train interrupted before its first step says so, and writes nothing', async (t) => {
  const data = tempDir(t)
  writeJsonl(join(data, 'train.jsonl'), completions(4))
  const out = join(tempDir(t), 'run')
  const io = capture()
  const code = await main(['train', '--model', MODEL_DIR, '--data', data, '--steps', '2', '--output', out], io, aborted())
  t.is(code, 1)
  t.regex(io.errors(), /^peft-node train: interrupted before the first step: nothing was trained or saved$/m)
  t.false(existsSync(out))
})
