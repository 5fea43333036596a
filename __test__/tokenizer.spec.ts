import test from 'ava'
import { join } from 'node:path'
import { LlamaModel, Tokenizer } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'

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
