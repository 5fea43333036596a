// Integers at the JS -> native boundary: napi reads numbers into u32/i32 by wrapping and
// truncating (token id 2^32 became 0, label 4294967196 became -100, maxNewTokens 2^32 + 5
// became 5, decode(1.5) decoded id 1). Every id, label and count is checked in TypeScript, and
// the error names the argument and the valid range.
import test from 'ava'
import { DyLoraConfig, LlamaModel, LoraConfig, Tokenizer, estimateFisher, getPeftModel } from '../src'
import { MODEL_DIR } from './helpers/fixtures'

const U32 = 2 ** 32

test('token ids, labels, positions and segments in forward: out of range or fractional is an error', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  t.is(model.config.vocab_size, 384)
  const forward = (o: Record<string, unknown>) => t.throwsAsync(model.forward({ inputIds: [[1, 2, 3]], ...o }))
  t.is((await forward({ inputIds: [[1, U32, 3]] }))!.message, 'inputIds: expected token ids in 0..383 (the vocabulary), found 4294967296 at [0, 1]')
  t.is((await forward({ inputIds: [[1, 2, 384]] }))!.message, 'inputIds: expected token ids in 0..383 (the vocabulary), found 384 at [0, 2]')
  t.is((await forward({ inputIds: [[1.5, 2, 3]] }))!.message, 'inputIds: expected token ids in 0..383 (the vocabulary), found 1.5 at [0, 0]')
  t.is((await forward({ labels: [[1, 4294967196, 3]] }))!.message, 'labels: expected -100 or a token id in 0..383, found 4294967196 at [0, 1]')
  t.is((await forward({ labels: [[1, 2, 384]] }))!.message, 'labels: expected -100 or a token id in 0..383, found 384 at [0, 2]')
  t.is((await forward({ positionIds: [[0, 1, 2 ** 31]] }))!.message, 'positionIds: expected integers in 0..2147483647, found 2147483648 at [0, 2]')
  t.is((await forward({ segmentIds: [[0, 0, U32]] }))!.message, 'segmentIds: expected integers in 0..4294967295, found 4294967296 at [0, 2]')
  t.is((await forward({ dropoutSeed: 1.5 }))!.message, 'dropoutSeed: expected a safe integer, found 1.5')
  const ok = await model.forward({ inputIds: [[0, 383]], labels: [[-100, 383]] })
  t.true(Number.isFinite(await ok.loss!.item()), 'the ends of the ranges are accepted')
  model.dispose()
})

test('generate and stream: prompt ids, maxNewTokens, topK and stop tokens are range-checked', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const gen = (ids: number[], o: Record<string, unknown> = {}) => t.throwsAsync(model.generate(ids, o))
  t.is((await gen([1, U32]))!.message, 'ids: expected token ids in 0..383 (the vocabulary), found 4294967296 in prompt 0')
  t.is((await gen([1, 2], { maxNewTokens: U32 + 5 }))!.message, 'maxNewTokens: expected an integer in 0..4294967295, found 4294967301')
  t.is((await gen([1, 2], { topK: U32 }))!.message, 'topK: expected an integer in 0..4294967295 (0 = off), found 4294967296')
  t.is((await gen([1, 2], { stopTokenIds: [U32 + 7] }))!.message, 'stopTokenIds: expected token ids in 0..383 (the vocabulary), found 4294967303')
  t.is((await gen([1, 2], { seed: 2 ** 60 }))!.message, `seed: expected a safe integer, found ${2 ** 60}`)
  const streamed = async () => {
    for await (const _ of model.stream([1, 2], { maxNewTokens: U32 + 5 })) break
  }
  t.is((await t.throwsAsync(streamed))!.message, 'maxNewTokens: expected an integer in 0..4294967295, found 4294967301')
  model.dispose()
})

test('decode, idToToken and the stream decoder refuse ids outside the vocabulary', async (t) => {
  const tok = await Tokenizer.fromFile(MODEL_DIR)
  t.is(tok.vocabSize, 384)
  for (const bad of [-1, U32, 1e10, 1.5]) {
    t.is(t.throws(() => tok.decode([5, bad, 6]))!.message, `ids: expected token ids in 0..383 (the vocabulary), found ${bad} at [1]`)
  }
  t.is(t.throws(() => tok.idToToken(U32 + 1))!.message, 'id: expected a token id in 0..383 (the vocabulary), found 4294967297')
  t.is(t.throws(() => tok.streamDecoder().step(1.5))!.message, 'id: expected a token id in 0..383 (the vocabulary), found 1.5')
  t.is(tok.decode([383]), tok.decode(Uint32Array.of(383)), 'in range: decodes')
})

test('adapter seeds, DyLoRA ranks, weighted svdRank and Fisher batches are range-checked', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const lora = new LoraConfig({ r: 2, targetModules: ['q_proj'] })
  t.is((await t.throwsAsync(getPeftModel(model, lora, { seed: 1.5 })))!.message, 'seed: expected a safe integer, found 1.5')
  const peft = await getPeftModel(model, new DyLoraConfig({ r: 4, targetModules: ['q_proj'] }))
  t.is(t.throws(() => peft.setDyLoraRank(U32 + 1))!.message, 'rank: expected an integer in 1..4294967295, found 4294967297')
  await peft.addAdapter('b', lora)
  const e = await t.throwsAsync(peft.addWeightedAdapter(['b'], [1], 'mix', { combinationType: 'svd', svdRank: U32 + 2 }))
  t.regex(e!.message, /svdRank: expected an integer in 1\.\.4294967295, found 4294967298/)
  const f = await t.throwsAsync(estimateFisher(peft, [{ inputIds: [[1, U32]], labels: [[1, 2]] }]))
  t.is(f!.message, 'batches[0].inputIds: expected token ids in 0..383 (the vocabulary), found 4294967296 at [0, 1]')
  peft.dispose()
})
