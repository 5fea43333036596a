import test from 'ava'
import { copyFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, Tokenizer } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

test('the fixture tokenizer reproduces the fixture ids and round-trips text', async (t) => {
  const tok = await Tokenizer.fromFile(join(MODEL_DIR, 'tokenizer.json'))
  const inp = inputs()
  t.deepEqual(tok.encode(inp.texts[1]), inp.input_ids[1].slice(0, 9))
  t.deepEqual(tok.encode(inp.texts[0]).slice(0, 16), inp.input_ids[0])
  for (const s of ['Hello, world!', 'café naïve', 'emoji 🎉 and 日本語', '  spaces\tand\nnewlines  ', '12345']) {
    t.is(tok.decode(tok.encode(s)), s)
  }
  t.deepEqual(tok.eosToken, { token: '<|end_of_text|>', id: 1 })
  t.is(tok.tokenToId('<|pad|>'), 2)
  t.is(tok.vocabSize, 384)
  t.is(tok.decode([0, ...tok.encode('hi')], { skipSpecialTokens: true }), 'hi')
})

test('the model exposes the tokenizer shipped beside it', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  t.truthy(model.tokenizer)
  t.deepEqual(model.tokenizer!.encode('Free software'), inputs().input_ids[1].slice(0, 9))
  model.dispose()
})

test('streaming decode pieces join to the whole decode', async (t) => {
  const tok = await Tokenizer.fromFile(join(MODEL_DIR, 'tokenizer.json'))
  const ids = tok.encode('emoji 🎉 and 日本語 done')
  const d = tok.streamDecoder()
  const text = ids.map((id) => d.step(id)).join('') + d.finish()
  t.is(text, tok.decode(ids))
})

test('chat templates render, and a template-less tokenizer says so', async (t) => {
  const tok = await Tokenizer.fromFile(join(MODEL_DIR, 'tokenizer.json'))
  const msgs = [{ role: 'user', content: 'hi' }]
  if (tok.chatTemplate == null) {
    t.throws(() => tok.applyChatTemplate(msgs), { message: /chat template/ })
  } else {
    t.true(tok.applyChatTemplate(msgs, { addGenerationPrompt: true }).includes('hi'))
  }
  t.throws(() => tok.applyChatTemplate([{ role: 'user' } as never]), { message: /content/ })
})

test('encodeBatch checks its argument: an array of strings, named in the error', async (t) => {
  const tok = await Tokenizer.fromFile(MODEL_DIR)
  await t.throwsAsync(tok.encodeBatch('x' as never), { message: 'texts: expected an array of strings, found a string' })
  await t.throwsAsync(tok.encodeBatch(['a', 3] as never), { message: 'texts[1]: expected a string, found number' })
  t.deepEqual(await tok.encodeBatch(['free software', 'copy']), [tok.encode('free software'), tok.encode('copy')])
})

// A chat template is code from a model file: it runs within a step budget and an output bound.
async function withTemplate(t: Parameters<typeof tempDir>[0], template: string) {
  const dir = tempDir(t)
  copyFileSync(join(MODEL_DIR, 'tokenizer.json'), join(dir, 'tokenizer.json'))
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: template }))
  return { tok: await Tokenizer.fromFile(dir), config: join(dir, 'tokenizer_config.json') }
}

test('a chat template that loops without end stops with an error naming its file', async (t) => {
  const nested = '{% for a in range(100000) %}{% for b in range(100000) %}{{ "" }}{% endfor %}{% endfor %}'
  const { tok, config } = await withTemplate(t, nested)
  const started = Date.now()
  const err = t.throws(() => tok.applyChatTemplate([{ role: 'user', content: 'hi' }]))
  t.true(err!.message.includes(config), err!.message)
  t.regex(err!.message, /steps/)
  t.true(Date.now() - started < 10_000, `took ${Date.now() - started} ms`)
  await t.throwsAsync(tok.applyChatTemplateAsync([{ role: 'user', content: 'hi' }]), { message: /steps/ })
})

test('printing a huge repeated sequence in one expression is refused at once (found by fuzzing)', async (t) => {
  // One instruction (so fuel does not count it) printing a lazily repeated list item by item:
  // it took 40-68 s under load before the formatter checked the length.
  const { tok, config } = await withTemplate(t, '{{ messages * 100000000 }}')
  const started = Date.now()
  const err = await t.throwsAsync(tok.applyChatTemplateAsync([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }]))
  t.true(err!.message.includes(config), err!.message)
  t.regex(err!.message, /printing a sequence of more than 100000 items was refused/)
  t.true(Date.now() - started < 5_000, `took ${Date.now() - started} ms`)
})

test('a chat template whose output grows without bound is refused by the output-size bound', async (t) => {
  const { tok, config } = await withTemplate(t, '{% for m in messages * 100000000 %}{{ m.content }}{% endfor %}')
  const err = await t.throwsAsync(tok.applyChatTemplateAsync([{ role: 'user', content: 'x'.repeat(4096) }]))
  t.true(err!.message.includes(config), err!.message)
  t.regex(err!.message, /more than 16 MiB/)
  // An ordinary render through the same path still works, on and off the JS thread.
  const ok = await withTemplate(t, '{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}')
  t.is(await ok.tok.applyChatTemplateAsync([{ role: 'user', content: 'hi' }]), '<user>hi')
  t.is(ok.tok.applyChatTemplate([{ role: 'user', content: 'hi' }]), '<user>hi')
})
