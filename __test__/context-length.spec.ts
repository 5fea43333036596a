// Generation stays inside the model's context (max_position_embeddings, 128 in the fixture):
// a longer prompt is refused, and maxNewTokens past the end is capped with a warning.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { LlamaModel } from '../src'
import { MODEL_DIR } from './helpers/fixtures'

const BIN = join(__dirname, '..', 'dist', 'cli', 'main.js')

function nextWarning(): Promise<Error> {
  return new Promise((resolve) => process.once('warning', resolve))
}

test('generate and stream refuse a prompt longer than the context and cap maxNewTokens with a warning', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  t.teardown(() => model.dispose())
  t.is(model.config.max_position_embeddings, 128)
  const long = Array.from({ length: 129 }, (_, i) => 3 + (i % 300))
  await t.throwsAsync(model.generate(long, { maxNewTokens: 1 }), { message: /129 tokens, longer than the model's context length of 128 tokens \(max_position_embeddings\)/ })
  await t.throwsAsync(async () => {
    for await (const _ of model.stream(long, { maxNewTokens: 1 })) void _
  }, { message: /context length of 128/ })

  const prompt = long.slice(0, 100)
  const warned = nextWarning()
  const out = await model.generate(prompt, { maxNewTokens: 500, stopTokenIds: [] })
  t.is(out.length, 128, 'new tokens stop at the context length')
  t.regex((await warned).message, /500 new tokens after a 100-token prompt would run past the model's context length of 128 tokens .*at most 28 new tokens/)

  const streamWarned = nextWarning()
  let streamed = 0
  for await (const _ of model.stream(prompt, { maxNewTokens: 500, stopTokenIds: [] })) streamed++
  t.is(streamed, 28)
  t.regex((await streamWarned).message, /at most 28 new tokens/)
})

test('the CLI warns when --max-tokens passes the context and refuses a prompt longer than it', (t) => {
  const run = (prompt: string) =>
    spawnSync(process.execPath, [BIN, 'generate', '--model', MODEL_DIR, '--prompt', prompt, '--max-tokens', '500', '--raw'], {
      encoding: 'utf8',
      env: { ...process.env, RAYON_NUM_THREADS: '1' },
    })
  const ok = run('Free software')
  t.is(ok.status, 0, ok.stderr)
  t.regex(ok.stderr, /warning: 500 new tokens after a \d+-token prompt would run past the model's context length of 128 tokens/)
  const tooLong = run('free software '.repeat(100))
  t.not(tooLong.status, 0)
  t.regex(tooLong.stderr, /longer than the model's context length of 128 tokens/)
})
