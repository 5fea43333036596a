// Bad input reaches JS as an Error naming the file, key or argument at fault; never a crash.
import test from 'ava'
import { copyFileSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, PeftModel, Tokenizer } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

test('a nonexistent path names the path', async (t) => {
  const p = join(tempDir(t, 'peft-node-err-'), 'no-such-model')
  const e = await t.throwsAsync(LlamaModel.fromPretrained(p))
  t.regex(e!.message, /no-such-model/)
})

test('a folder without config.json says so', async (t) => {
  const d = tempDir(t, 'peft-node-err-')
  copyFileSync(join(MODEL_DIR, 'model.safetensors'), join(d, 'model.safetensors'))
  const e = await t.throwsAsync(LlamaModel.fromPretrained(d))
  t.regex(e!.message, /config\.json/)
})

test('an unsupported model_type names it', async (t) => {
  const d = tempDir(t, 'peft-node-err-')
  writeFileSync(join(d, 'config.json'), readFileSync(join(MODEL_DIR, 'config.json'), 'utf8').replace('"llama"', '"bert"'))
  const e = await t.throwsAsync(LlamaModel.fromPretrained(d))
  t.regex(e!.message, /model_type.*bert/)
})

test('a truncated safetensors file names the file', async (t) => {
  const d = tempDir(t, 'peft-node-err-')
  copyFileSync(join(MODEL_DIR, 'config.json'), join(d, 'config.json'))
  const bytes = readFileSync(join(MODEL_DIR, 'model.safetensors'))
  writeFileSync(join(d, 'model.safetensors'), bytes.subarray(0, 1000))
  const e = await t.throwsAsync(LlamaModel.fromPretrained(d))
  t.regex(e!.message, /model\.safetensors/)
})

test('a truncated GGUF file names the file', async (t) => {
  const p = join(tempDir(t, 'peft-node-err-'), 'broken.gguf')
  writeFileSync(p, Buffer.from('GGUF\x03\x00\x00\x00\x05', 'latin1'))
  const e = await t.throwsAsync(LlamaModel.fromPretrained(p))
  t.regex(e!.message, /broken\.gguf/)
})

test('unknown dtype and device are rejected', async (t) => {
  const e1 = await t.throwsAsync(LlamaModel.fromPretrained(MODEL_DIR, { dtype: 'int8' as never }))
  t.regex(e1!.message, /dtype/)
  const e2 = await t.throwsAsync(LlamaModel.fromPretrained(MODEL_DIR, { device: 'tpu' }))
  t.regex(e2!.message, /device/)
})

test('forward and generate validate their arguments', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const inp = inputs()
  const big = inp.input_ids.map((r) => [...r])
  big[1][3] = 384
  t.regex((await t.throwsAsync(model.forward({ inputIds: big })))!.message, /inputIds.*384.*\[1, 3\]/)
  const e = await t.throwsAsync(model.forward({ inputIds: inp.input_ids, attentionMask: [inp.attention_mask[0]] }))
  t.regex(e!.message, /attentionMask.*\[2, 16\]/)
  t.regex((await t.throwsAsync(model.forward({ inputIds: [[1, 2], [3]] })))!.message, /inputIds/)
  t.regex((await t.throwsAsync(model.forward({ inputIds: [[1, -2]] })))!.message, /inputIds/)
  t.regex((await t.throwsAsync(model.forward({ inputIds: [[1, 2]], labels: [[1, 2, 3]] })))!.message, /labels/)
  t.regex((await t.throwsAsync(model.generate([1, 2], { maxNewTokens: -1 })))!.message, /maxNewTokens/)
  t.regex((await t.throwsAsync(model.generate([1, 2], { topP: 0 })))!.message, /topP/)
  t.regex((await t.throwsAsync(model.generate([1, 999])))!.message, /999/)
  model.dispose()
})

test('a loss with no trainable parameter cannot backpropagate, and says why', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const inp = inputs()
  const { loss } = await model.forward({ inputIds: inp.input_ids, labels: inp.labels })
  t.regex((await t.throwsAsync(loss!.backward()))!.message, /requiresGrad/)
  model.dispose()
})

test('a disposed model or tensor gives a clear error', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const { logits } = await model.forward({ inputIds: [[1, 2, 3]] })
  logits.dispose()
  t.throws(() => logits.shape, { message: /disposed/ })
  model.dispose()
  await t.throwsAsync(model.forward({ inputIds: [[1, 2, 3]] }), { message: /disposed/ })
  t.throws(() => model.namedParameters(), { message: /disposed/ })
})

test('a missing tokenizer file names it', async (t) => {
  const e = await t.throwsAsync(Tokenizer.fromFile(join(tempDir(t, 'peft-node-err-'), 'tokenizer.json')))
  t.regex(e!.message, /tokenizer\.json/)
})

test('a model.safetensors (or .gguf) that is a folder is named as such, not "No such device"', async (t) => {
  const d = tempDir(t, 'peft-node-err-')
  copyFileSync(join(MODEL_DIR, 'config.json'), join(d, 'config.json'))
  mkdirSync(join(d, 'model.safetensors'))
  const e = await t.throwsAsync(LlamaModel.fromPretrained(d))
  t.is(e!.message, `${join(d, 'model.safetensors')}: expected a safetensors file, found a folder`)
  const adapter = join(d, 'adapter')
  mkdirSync(join(adapter, 'adapter_model.safetensors'), { recursive: true })
  writeFileSync(join(adapter, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj'] }))
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  t.teardown(() => model.dispose())
  const e2 = await t.throwsAsync(PeftModel.fromPretrained(model, adapter))
  t.regex(e2!.message, /adapter_model\.safetensors: expected a safetensors file, found a folder/)
})

test('hidden_size not divisible by num_attention_heads (no head_dim) is a config error naming the keys', async (t) => {
  const d = tempDir(t, 'peft-node-err-')
  const config = JSON.parse(readFileSync(join(MODEL_DIR, 'config.json'), 'utf8'))
  delete config.head_dim
  writeFileSync(join(d, 'config.json'), JSON.stringify({ ...config, num_attention_heads: 5, num_key_value_heads: 5 }))
  copyFileSync(join(MODEL_DIR, 'model.safetensors'), join(d, 'model.safetensors'))
  const e = await t.throwsAsync(LlamaModel.fromPretrained(d))
  t.regex(e!.message, /config\.json: key `num_attention_heads`: expected a divisor of hidden_size \(64\), or an explicit head_dim, found 5/)
})
