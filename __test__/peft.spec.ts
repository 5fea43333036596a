// getPeftModel / PeftModel from TypeScript: names, counts, lifecycle, merged checkpoints, bad input.
import test from 'ava'
import { writeFileSync, readFileSync, copyFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { AdamW, LlamaModel, LoraConfig, PeftModel, PromptTuningConfig, getPeftModel } from '../src'
import { FIXTURES, MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const load = () => LlamaModel.fromPretrained(MODEL_DIR)
const batch = () => ({ inputIds: inputs().input_ids, attentionMask: inputs().attention_mask, labels: inputs().labels })

test('a new LoRA adapter: PEFT names, PEFT counts, zero-init B leaves the output unchanged', async (t) => {
  const model = await load()
  const before = await (await model.forward({ inputIds: inputs().input_ids })).logits.toFloat32Array()
  const peft = await getPeftModel(model, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'] }))
  const names = peft.namedParameters({ trainableOnly: true }).map(([n]) => n)
  t.is(names[0], 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight')
  t.is(names.length, 8)
  const all = peft.namedParameters().map(([n]) => n)
  t.true(all.includes('base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight'))
  t.true(all.includes('base_model.model.model.embed_tokens.weight'))
  const line = peft.printTrainableParameters(() => undefined)
  // 2 layers × (q: 4·64 + 64·4, v: 4·64 + 32·4) = 2 × (512 + 384) = 1792
  t.regex(line, /^trainable params: 1,792 \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}$/)
  const after = await (await peft.forward({ inputIds: inputs().input_ids })).logits.toFloat32Array()
  t.deepEqual(after, before)
  t.deepEqual(peft.targetedModules().slice(0, 2), ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj'])
  t.is(peft.peftConfig.default.peft_type, 'LORA')
  t.is(peft.peftConfig.default.r, 4)
  peft.dispose()
})

test('training lowers the loss; save, load and merge agree; the merged checkpoint loads back', async (t) => {
  const peft = await getPeftModel(await load(), new LoraConfig({ r: 4, targetModules: 'all-linear', useRslora: true }))
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-2 })
  const losses: number[] = []
  for (let i = 0; i < 5; i++) {
    opt.zeroGrad()
    const { loss } = await peft.forward(batch())
    losses.push(await loss!.item())
    await loss!.backward()
    await opt.step()
  }
  t.true(losses[4] < losses[0], `loss ${losses.join(' ')}`)
  const dir = tempDir(t, 'peft-node-peft-')
  await peft.savePretrained(dir)
  const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'))
  t.is(cfg.inference_mode, true)
  t.is(cfg.use_rslora, true)
  t.deepEqual(Object.keys(cfg), Object.keys(cfg).sort())
  const ids = { inputIds: inputs().input_ids }
  const trained = await (await peft.forward(ids)).logits.toFloat32Array()
  const reloaded = await PeftModel.fromPretrained(await load(), dir)
  t.deepEqual(await (await reloaded.forward(ids)).logits.toFloat32Array(), trained)
  t.is(reloaded.namedParameters({ trainableOnly: true }).length, 0, 'loaded for inference: frozen')
  const merging = reloaded.mergeAndUnload()
  t.true(merging instanceof Promise, 'mergeAndUnload runs off the JS thread and returns a Promise')
  const merged = await merging
  const m = await (await merged.forward(ids)).logits.toFloat32Array()
  t.true(m.every((x, i) => Math.abs(x - trained[i]) < 1e-4))
  const out = tempDir(t, 'peft-node-peft-')
  await merged.savePretrained(out)
  const again = await LlamaModel.fromPretrained(out)
  t.deepEqual(await (await again.forward(ids)).logits.toFloat32Array(), m)
  t.deepEqual(again.tokenizer!.encode('Free software'), merged.tokenizer!.encode('Free software'))
  // Saved in bfloat16: half the weights' bytes, config says so, and it loads back (as float32)
  // with logits within bf16 rounding of the float32 checkpoint's.
  const half = tempDir(t, 'peft-node-peft-')
  await merged.savePretrained(half, { dtype: 'bfloat16' })
  const size = (d: string) => statSync(join(d, 'model.safetensors')).size
  t.true(size(half) < 0.55 * size(out), `${size(half)} vs ${size(out)} bytes`)
  t.is(JSON.parse(readFileSync(join(half, 'config.json'), 'utf8')).torch_dtype, 'bfloat16')
  const h = await (await (await LlamaModel.fromPretrained(half)).forward(ids)).logits.toFloat32Array()
  const worst = h.reduce((w, x, i) => Math.max(w, Math.abs(x - m[i])), 0)
  t.log(`bf16 checkpoint: max |logit - f32| = ${worst.toExponential(2)}`)
  const scale = m.reduce((w, x) => Math.max(w, Math.abs(x)), 0)
  t.true(worst > 0 && worst < 0.02 * scale, `${worst} vs logits up to ${scale}`) // bf16 keeps 8 bits of mantissa
  await t.throwsAsync(merged.savePretrained(tempDir(t, 'peft-node-peft-'), { dtype: 'int8' as never }), { message: /dtype/ })
  peft.dispose()
})

test('several adapters: add, switch, disable, delete', async (t) => {
  const peft = await getPeftModel(await load(), new LoraConfig({ r: 2, targetModules: ['q_proj'], initLoraWeights: 'gaussian' }))
  await peft.addAdapter('other', new LoraConfig({ r: 2, targetModules: ['v_proj'] }))
  t.deepEqual(peft.adapterNames, ['default', 'other'])
  t.deepEqual(peft.activeAdapters, ['default'])
  peft.setAdapter('other')
  t.is(peft.activeAdapter, 'other')
  t.true(peft.namedParameters({ trainableOnly: true }).every(([n]) => n.includes('.other.')))
  const ids = { inputIds: inputs().input_ids }
  const base = await (await peft.baseModel.forward(ids)).logits.toFloat32Array()
  const off = await peft.withAdaptersDisabled(async () => (await peft.forward(ids)).logits.toFloat32Array())
  t.deepEqual(off, base)
  peft.deleteAdapter('other')
  t.deepEqual(peft.adapterNames, ['default'])
  await t.throwsAsync(peft.addAdapter('default', new LoraConfig({ r: 2 })), { message: /default/ })
  peft.dispose()
})

test('bad LoRA input gives clear errors', async (t) => {
  t.throws(() => new LoraConfig({ r: 0 }), { message: /r: expected an integer > 0/ })
  t.throws(() => new LoraConfig({ loraDropout: 1.5 }), { message: /loraDropout/ })
  const model = await load()
  const e = await t.throwsAsync(getPeftModel(model, new LoraConfig({ targetModules: ['nope_proj'] })))
  t.regex(e!.message, /nope_proj/)
  t.regex(e!.message, /q_proj/, 'lists the available module names')
  const peft = await getPeftModel(model, new LoraConfig({ r: 2 }))
  const file = join(tempDir(t, 'peft-node-peft-'), 'a-file')
  writeFileSync(file, 'x')
  t.regex((await t.throwsAsync(peft.savePretrained(file)))!.message, /a-file/)
  peft.dispose()

  const dir = tempDir(t, 'peft-node-peft-')
  const src = join(FIXTURES, 'cases', 'lora_qv')
  writeFileSync(join(dir, 'adapter_config.json'), readFileSync(join(src, 'adapter_config.json'), 'utf8').replace('"LORA"', '"NOT_A_METHOD"'))
  copyFileSync(join(src, 'adapter_model.safetensors'), join(dir, 'adapter_model.safetensors'))
  t.regex((await t.throwsAsync(PeftModel.fromPretrained(await load(), dir)))!.message, /NOT_A_METHOD/)

  const shapes = tempDir(t, 'peft-node-peft-')
  writeFileSync(join(shapes, 'adapter_config.json'), readFileSync(join(src, 'adapter_config.json'), 'utf8').replace('"r": 4', '"r": 3'))
  copyFileSync(join(src, 'adapter_model.safetensors'), join(shapes, 'adapter_model.safetensors'))
  t.regex((await t.throwsAsync(PeftModel.fromPretrained(await load(), shapes)))!.message, /shape/)
})

test('a scaled loss scales the gradients; packed rows run', async (t) => {
  const peft = await getPeftModel(await load(), new LoraConfig({ r: 2, targetModules: ['q_proj'], initLoraWeights: 'gaussian' }))
  const [name, p] = peft.namedParameters({ trainableOnly: true }).find(([n]) => n.includes('lora_B'))!
  const { loss } = await peft.forward(batch())
  await loss!.backward()
  const g1 = await p.grad!.toFloat32Array()
  peft.zeroGrad()
  const { loss: l2 } = await peft.forward(batch())
  await l2!.mul(0.25).backward()
  const g2 = await p.grad!.toFloat32Array()
  t.true(g1.some((x) => x !== 0), name)
  t.true(g2.every((x, i) => Math.abs(x - 0.25 * g1[i]) <= 1e-6 * Math.abs(g1[i]) + 1e-9))
  const ids = inputs().input_ids[0]
  const packed = await peft.forward({ inputIds: [ids], positionIds: [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]], segmentIds: [[...Array(6).fill(0), ...Array(10).fill(1)]] })
  const alone = await peft.forward({ inputIds: [ids.slice(6)] })
  const a = await packed.logits.toFloat32Array()
  const b = await alone.logits.toFloat32Array()
  const tail = a.slice(6 * 384)
  t.true(tail.every((x, i) => Math.abs(x - b[i]) < 1e-4))
  peft.dispose()
})

test('prompt-learning parameters carry PEFT\'s names (prompt_encoder.<adapter>.embedding.weight)', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new PromptTuningConfig({ numVirtualTokens: 4 }), { warn: false })
  t.teardown(() => peft.dispose())
  const names = peft.namedParameters({ trainableOnly: true }).map(([n]) => n)
  t.deepEqual(names, ['prompt_encoder.default.embedding.weight'])
  t.true(peft.namedParameters().some(([n]) => n === 'base_model.model.model.embed_tokens.weight'))
})
