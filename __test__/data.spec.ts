// The data pipeline: record formats, prompt masking, chat templates, truncation, errors that
// name file and line, seeded bucketed batches, validation split and packing.
import test from 'ava'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { IGNORE, Rng, Tokenizer, collate, collatePacked, loadData, packExamples, packedAttentionAllowed, planEpoch, targetCount } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { completions, texts, withChatML, writeJsonl } from './helpers/train-data'
import { tempDir } from './helpers/temp'

const tokenizer = () => Tokenizer.fromFile(join(MODEL_DIR, 'tokenizer.json'))

test('text, prompt/completion and messages records: labels cover completions and assistant turns only', async (t) => {
  const tok = await tokenizer()
  const d = tempDir(t)
  const file = writeJsonl(join(d, 'mixed.jsonl'), [
    { text: 'free software' },
    { prompt: 'Say copy:', completion: ' copy' },
    { messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'free' }, { role: 'user', content: 'again' }, { role: 'assistant', content: 'copy' }] },
  ])
  const { train, valid } = await loadData(file, withChatML(tok))
  t.is(valid, null)
  const [text, comp, chat] = train.examples
  t.deepEqual(text.inputIds, [...tok.encode('free software'), tok.eosToken!.id], 'text ends with EOS')
  t.deepEqual(text.labels, text.inputIds)
  t.is(text.where, `${file}:1`)
  // The JS ChatML template is used for completions too (as mlx-lm does with a chat template).
  const prompt = tok.encode('<|im_start|>user\nSay copy:<|im_end|>\n<|im_start|>assistant\n')
  t.deepEqual(comp.inputIds.slice(0, prompt.length), prompt, 'the prompt is tokenized as at inference')
  t.true(comp.labels.slice(0, prompt.length).every((l) => l === IGNORE))
  t.deepEqual(comp.labels.slice(prompt.length), comp.inputIds.slice(prompt.length))
  const assistant = (s: string) => tok.encode(`${s}<|im_end|>\n`, { addSpecialTokens: false })
  const trained = chat.labels.filter((l) => l !== IGNORE)
  t.deepEqual(trained, [...assistant('free'), ...assistant('copy')], 'both assistant turns, nothing else')
  const all = await loadData(file, withChatML(tok), { maskPrompt: false })
  t.true(all.train.examples.every((e) => e.labels.every((l, i) => l === e.inputIds[i])), 'maskPrompt: false trains on everything')
})

test('loadData renders chat templates off the JS thread when the tokenizer can, with the same result', async (t) => {
  const tok = await tokenizer()
  const sync = withChatML(tok)
  let asyncCalls = 0
  const offThread = {
    ...sync,
    applyChatTemplate: () => {
      throw new Error('the data pipeline rendered on the JS thread')
    },
    applyChatTemplateAsync: async (ms: Parameters<typeof sync.applyChatTemplate>[0], o?: { addGenerationPrompt?: boolean }) => {
      asyncCalls++
      await new Promise((res) => setImmediate(res))
      return sync.applyChatTemplate(ms, o)
    },
  }
  const data = [
    { prompt: 'Say copy:', completion: ' copy' },
    { messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'free' }, { role: 'user', content: 'again' }, { role: 'assistant', content: 'copy' }] },
  ]
  const got = await loadData(data, offThread)
  const want = await loadData(data, sync)
  t.deepEqual(got.train.examples, want.train.examples)
  // completion: whole + prefix + full; chat with two assistant turns: whole + 2 × (prefix + full)
  t.is(asyncCalls, 3 + 5)
})

test('without a chat template, completions are concatenated and chat data is a clear error', async (t) => {
  const tok = await tokenizer()
  const { train } = await loadData([{ prompt: 'Say copy:', completion: ' copy' }], tok)
  const p = tok.encode('Say copy:')
  t.deepEqual(train.examples[0].inputIds, [...p, ...tok.encode(' copy', { addSpecialTokens: false }), tok.eosToken!.id])
  t.is(targetCount(train.examples[0].labels), train.examples[0].inputIds.length - p.length)
  const e = await t.throwsAsync(loadData([{ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }], tok))
  t.regex(e!.message, /train\[0\]: chat data needs a chat template.*none/)
})

test('the real ChatML template (SmolLM2 tokenizer) masks exactly the generation prompt', async (t) => {
  const gguf = join(__dirname, '..', '..', 'main', '.cache', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf')
  const fs = await import('node:fs')
  if (!fs.existsSync(gguf)) return t.pass('SmolLM2 GGUF absent')
  const tok = await Tokenizer.fromFile(gguf)
  const messages = [{ role: 'user', content: 'What is the capital of Ohio?' }, { role: 'assistant', content: 'Columbus.' }]
  const { train } = await loadData([{ messages }], tok)
  const prompt = tok.encode(tok.applyChatTemplate(messages.slice(0, 1), { addGenerationPrompt: true }))
  const ex = train.examples[0]
  t.deepEqual(ex.inputIds.slice(0, prompt.length), prompt)
  t.is(tok.decode(ex.labels.filter((l) => l !== IGNORE)), 'Columbus.<|im_end|>\n')
})

test('bad records: errors name the file and line', async (t) => {
  const tok = withChatML(await tokenizer())
  const d = tempDir(t)
  const cases: [unknown[], RegExp][] = [
    [[{ text: 'ok' }, { text: 'ok' }, '{"text": "broken'], /bad\.jsonl:3: malformed JSON/],
    [[{ text: 'ok' }, { messages: [{ role: 'user', content: 'a' }, { content: 'b' }] }], /bad\.jsonl:2: messages\[1\]: missing "role"/],
    [[{ prompt: 'a', completion: '' }], /bad\.jsonl:1: "completion" is empty/],
    [[{ prompt: 'a' }], /bad\.jsonl:1: "completion": expected a string/],
    [[{ question: 'a' }], /bad\.jsonl:1: unknown record format \(keys: question\)/],
    [[{ messages: [{ role: 'user', content: 'a' }] }], /bad\.jsonl:1: .*no "assistant" turn/],
    [[], /bad\.jsonl: the dataset is empty/],
  ]
  for (const [records, re] of cases) {
    const file = writeJsonl(join(d, 'bad.jsonl'), records)
    if (records.length === 0) writeFileSync(file, '\n')
    const e = await t.throwsAsync(loadData(file, tok))
    t.regex(e!.message, re)
  }
  await t.throwsAsync(loadData(join(d, 'nope.jsonl'), tok), { message: /nope\.jsonl: no such data file/ })
  await t.throwsAsync(loadData(d, tok), { message: /needs a train\.jsonl/ })
  await t.throwsAsync(loadData([{ text: 'x' }], null), { message: /no tokenizer/ })
})

test('truncation: long examples are cut to maxSeqLength, or an error naming them with truncation off', async (t) => {
  const tok = await tokenizer()
  const d = tempDir(t)
  const file = writeJsonl(join(d, 'long.jsonl'), [{ text: 'free software '.repeat(30) }, { prompt: 'free software '.repeat(30), completion: ' copy' }])
  const { train, warnings } = await loadData(file, tok, { maxSeqLength: 16 })
  t.is(train.examples.length, 1, 'the completion that was cut away entirely is dropped')
  t.is(train.examples[0].inputIds.length, 16)
  t.regex(warnings[0], /long\.jsonl:2: dropped/)
  const e = await t.throwsAsync(loadData(file, tok, { maxSeqLength: 16, truncation: false }))
  t.regex(e!.message, /long\.jsonl:1: the example has \d+ tokens, more than maxSeqLength 16/)
})

test('a folder with train.jsonl and valid.jsonl; a seeded validation split otherwise', async (t) => {
  const tok = await tokenizer()
  const d = tempDir(t)
  mkdirSync(join(d, 'data'))
  writeJsonl(join(d, 'data', 'train.jsonl'), completions(10))
  writeJsonl(join(d, 'data', 'valid.jsonl'), completions(3))
  const both = await loadData(join(d, 'data'), tok)
  t.is(both.train.examples.length, 10)
  t.is(both.valid!.examples.length, 3)
  const a = await loadData(texts(20), tok, { validSplit: 0.25, seed: 1 })
  const b = await loadData(texts(20), tok, { validSplit: 0.25, seed: 1 })
  t.is(a.valid!.examples.length, 5)
  t.is(a.train.examples.length, 15)
  t.deepEqual(a.valid!.examples.map((e) => e.where), b.valid!.examples.map((e) => e.where))
  await t.throwsAsync(loadData(texts(2), tok, { validSplit: 5 }), { message: /validSplit/ })
})

test('epoch plans: every example once, the same for the same seed and epoch, bucketed by length', (t) => {
  const lengths = Array.from({ length: 103 }, (_, i) => 5 + ((i * 37) % 60))
  const a = planEpoch(lengths, 0, { batchSize: 4, seed: 7 })
  t.deepEqual(a.flat().sort((x, y) => x - y), lengths.map((_, i) => i))
  t.deepEqual(planEpoch(lengths, 0, { batchSize: 4, seed: 7 }), a)
  t.notDeepEqual(planEpoch(lengths, 1, { batchSize: 4, seed: 7 }), a)
  t.notDeepEqual(planEpoch(lengths, 0, { batchSize: 4, seed: 8 }), a)
  const padding = (plan: number[][]) => plan.reduce((n, b) => n + b.length * Math.max(...b.map((i) => lengths[i])) - b.reduce((s, i) => s + lengths[i], 0), 0)
  t.true(padding(a) < padding(planEpoch(lengths, 0, { batchSize: 4, seed: 7, lengthBucketing: false })) / 3, 'bucketing pads less')
  t.deepEqual(planEpoch(lengths, 0, { batchSize: 4, shuffle: false, lengthBucketing: false })[0], [0, 1, 2, 3])
  for (const bs of [0, -1, 1.5]) t.throws(() => planEpoch(lengths, 0, { batchSize: bs }), { message: /batchSize: expected an integer >= 1/ })
})

test('the seeded PRNG restarts from a saved state', (t) => {
  const r = new Rng(42)
  r.next()
  const s = r.state
  const xs = [r.next(), r.next()]
  r.state = s
  t.deepEqual([r.next(), r.next()], xs)
  t.true(xs.every((x) => x >= 0 && x < 1))
})

test('collate right-pads with mask 0 and label -100', (t) => {
  const b = collate([{ inputIds: [5, 6, 7], labels: [IGNORE, 6, 7], where: 'a' }, { inputIds: [8, 9], labels: [8, 9], where: 'b' }], 2)
  t.deepEqual(b.inputIds, [[5, 6, 7], [8, 9, 2]])
  t.deepEqual(b.attentionMask, [[1, 1, 1], [1, 1, 0]])
  t.deepEqual(b.labels, [[IGNORE, 6, 7], [8, 9, IGNORE]])
  t.is(b.targetTokens, 3)
  t.is(b.tokens, 5)
})

test('packing: positions restart per example, segments keep examples apart, no example predicts the next', (t) => {
  const ex = (n: number, base: number) => ({ inputIds: Array.from({ length: n }, (_, i) => base + i), labels: Array.from({ length: n }, (_, i) => base + i), where: `e${base}` })
  const rows = packExamples([ex(3, 10), ex(4, 20), ex(5, 30), ex(2, 40)], 8)
  t.deepEqual(rows.map((r) => r.inputIds.length), [7, 7])
  t.deepEqual(rows[0].positionIds, [0, 1, 2, 0, 1, 2, 3])
  t.deepEqual(rows[0].segmentIds, [1, 1, 1, 2, 2, 2, 2])
  t.deepEqual(rows[0].labels, [IGNORE, 11, 12, IGNORE, 21, 22, 23])
  const b = collatePacked(rows, 0)
  t.deepEqual(b.positionIds![1], [0, 1, 2, 3, 4, 0, 1])
  t.false(packedAttentionAllowed(rows[0].segmentIds, 3, 2), 'the second example cannot see the first')
  t.true(packedAttentionAllowed(rows[0].segmentIds, 5, 3))
  t.false(packedAttentionAllowed(rows[0].segmentIds, 3, 4), 'causal')
  t.throws(() => packExamples([ex(9, 0)], 8), { message: /e0: 9 tokens do not fit/ })
})
