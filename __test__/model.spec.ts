import test from 'ava'
import { LlamaModel } from '../src'
import { MODEL_DIR, expected, inputs, maxMaskedDiff, relErr } from './helpers/fixtures'

test('base logits, loss and greedy generation match transformers', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const inp = inputs()
  const exp = expected('base')
  const { logits, loss } = await model.forward({ inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels })
  t.deepEqual(logits.shape, [2, 16, 384])
  const diff = maxMaskedDiff(await logits.toFloat32Array(), exp.get('logits')!.data, inp.attention_mask, 384)
  t.log(`logits max abs err ${diff.toExponential(2)}`)
  t.true(diff < 1e-4)
  const l = await loss!.item()
  t.true(Math.abs(l - exp.get('loss')!.data[0]) < 1e-4)
  const greedy = await model.generate(inp.input_ids[0].slice(0, inp.prompt_len), { maxNewTokens: inp.new_tokens, stopTokenIds: [] })
  t.deepEqual(greedy, Array.from(exp.get('greedy')!.data))
  model.dispose()
})

test('full fine-tuning: every gradient matches transformers, and accumulates until zeroGrad', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const inp = inputs()
  const exp = expected('full')
  const params = model.namedParameters()
  t.is(params[0][0], 'model.embed_tokens.weight')
  t.true(params.every(([, p]) => !p.requiresGrad), 'base weights start frozen')
  for (const [, p] of params) p.requiresGrad = true
  const { loss } = await model.forward({ inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels })
  await loss!.backward({ retainGraph: true }) // kept for the second backward below
  let worst = 0
  for (const [name, p] of params) {
    const g = p.grad
    t.truthy(g, `gradient for ${name}`)
    worst = Math.max(worst, relErr(await g!.toFloat32Array(), exp.get(`grad.${name}`)!.data))
  }
  t.log(`worst gradient rel err ${worst.toExponential(2)}`)
  t.true(worst < 1e-3)
  await loss!.backward()
  const name = 'model.norm.weight'
  const doubled = await model.namedParameters().find(([n]) => n === name)![1].grad!.toFloat32Array()
  t.true(relErr(doubled, exp.get(`grad.${name}`)!.data.map((x) => 2 * x)) < 1e-3, 'a second backward adds')
  model.zeroGrad()
  t.is(params[0][1].grad, null)
  model.dispose()
})

test('streaming yields the same tokens as generate', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const prompt = inputs().input_ids[0].slice(0, 6)
  const whole = await model.generate(prompt, { maxNewTokens: 8, stopTokenIds: [] })
  const streamed: number[] = []
  for await (const tok of model.stream(prompt, { maxNewTokens: 8, stopTokenIds: [] })) streamed.push(tok)
  t.deepEqual([...prompt, ...streamed], whole)
  model.dispose()
})

test('a batch of prompts of different lengths matches generating each alone', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const ids = inputs().input_ids
  const a = ids[0].slice(0, 9)
  const b = ids[1].slice(0, 4)
  const batch = await model.generate([a, b], { maxNewTokens: 6, stopTokenIds: [] })
  t.deepEqual(batch[0], await model.generate(a, { maxNewTokens: 6, stopTokenIds: [] }))
  t.deepEqual(batch[1], await model.generate(b, { maxNewTokens: 6, stopTokenIds: [] }))
  model.dispose()
})

test('sampling is reproducible with a seed and respects topK = 1 as greedy', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const prompt = inputs().input_ids[0].slice(0, 6)
  const opts = { maxNewTokens: 8, doSample: true, temperature: 0.9, topP: 0.95, seed: 7, stopTokenIds: [] }
  t.deepEqual(await model.generate(prompt, opts), await model.generate(prompt, opts))
  const greedy = await model.generate(prompt, { maxNewTokens: 8, stopTokenIds: [] })
  t.deepEqual(await model.generate(prompt, { ...opts, topK: 1 }), greedy)
  model.dispose()
})

test('stop tokens end generation and keep the stop token', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const prompt = inputs().input_ids[0].slice(0, 6)
  const greedy = await model.generate(prompt, { maxNewTokens: 8, stopTokenIds: [] })
  const stop = greedy[8]
  const out = await model.generate(prompt, { maxNewTokens: 8, stopTokenIds: [stop] })
  t.deepEqual(out, greedy.slice(0, greedy.indexOf(stop, 6) + 1))
  model.dispose()
})

test('stream does not yield the stop token that ends it (stop tokens are not text) unless includeStopToken', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const prompt = [1, 2, 3]
  const free = (await model.generate(prompt, { maxNewTokens: 6, stopTokenIds: [] })).slice(prompt.length)
  const stop = free[2]
  const before = free.slice(0, free.indexOf(stop))
  const collect = async (o: object) => {
    const got: number[] = []
    for await (const id of model.stream(prompt, { maxNewTokens: 6, stopTokenIds: [stop], ...o })) got.push(id)
    return got
  }
  t.deepEqual(await collect({}), before)
  t.deepEqual(await collect({ includeStopToken: true }), [...before, stop])
  t.deepEqual((await model.generate(prompt, { maxNewTokens: 6, stopTokenIds: [stop] })).slice(prompt.length), [...before, stop], 'generate keeps it, as transformers does')
  model.dispose()
})
