// The smoke test run by scripts/pack-test.mjs inside a fresh install of the packed tarballs.
// smoke.mjs (import) and smoke.cjs (require) both call this with what they imported, so the
// same checks run through both halves of the `exports` map.
'use strict'
const assert = require('node:assert/strict')
const path = require('node:path')

/** @param {typeof import('peft-node')} peft */
async function smoke(peft, label, modelDir) {
  const log = (msg) => console.log(`[${label}] ${msg}`)
  const { LlamaModel } = peft
  assert.equal(typeof LlamaModel, 'function', 'LlamaModel is exported')

  const model = await LlamaModel.fromPretrained(modelDir)

  // Which binary loaded: it must come from the installed platform package, never a .node
  // elsewhere, and the CUDA build must not be loaded unless asked for.
  const addons = Object.keys(require.cache).filter((f) => f.endsWith('.node'))
  log(`native addon: ${addons.map((f) => path.relative(process.cwd(), f)).join(', ')}`)
  assert.equal(addons.length, 1, 'exactly one native addon loaded')
  assert.match(addons[0], /node_modules[\\/]peft-node-[a-z0-9-]+[\\/]peft-node\.[a-z0-9-]+\.node$/)
  assert.ok(addons[0].startsWith(process.cwd()), 'the addon comes from this install')
  assert.ok(!addons[0].includes('-cuda'), 'the CUDA build is not loaded by default')

  const tok = model.tokenizer
  assert.ok(tok, 'the fixture ships a tokenizer')
  const ids = tok.encode('the quick brown fox jumps over the lazy dog')
  log(`prompt: ${ids.length} tokens`)

  // 3 LoRA steps with AdamW, then save the adapter in PEFT's format and load it back.
  const { getPeftModel, LoraConfig, PeftModel, AdamW } = peft
  const lora = await getPeftModel(model, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'], initLoraWeights: 'gaussian' }))
  const opt = new AdamW(lora.parameters({ trainableOnly: true }), { lr: 0.02 })
  const losses = []
  for (let step = 0; step < 3; step++) {
    opt.zeroGrad()
    const { logits, loss } = await lora.forward({ inputIds: [ids], labels: [ids] })
    const value = await loss.item()
    assert.ok(Number.isFinite(value), `step ${step}: loss is finite (${value})`)
    await loss.backward()
    await opt.step()
    logits.dispose()
    loss.dispose()
    losses.push(value)
    log(`step ${step}: loss ${value.toFixed(5)}`)
  }
  assert.ok(losses[2] < losses[0], `the loss goes down (${losses.map((l) => l.toFixed(5)).join(' -> ')})`)
  // In the working folder (pack-test's temp app), which is removed with it, not in the system temp folder.
  const dir = require('node:fs').mkdtempSync(path.join(process.cwd(), 'adapter-'))
  await lora.savePretrained(dir)
  for (const f of ['adapter_config.json', 'adapter_model.safetensors']) assert.ok(require('node:fs').existsSync(path.join(dir, f)), f)
  const back = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(modelDir), dir)
  const a = await (await lora.forward({ inputIds: [ids] })).logits.toFloat32Array()
  const b = await (await back.forward({ inputIds: [ids] })).logits.toFloat32Array()
  assert.deepEqual(b, a, 'the saved adapter gives the same logits')
  log(`adapter saved and loaded back: ${dir}`)
  back.dispose()

  const out = await model.generate(ids, { maxNewTokens: 8, stopTokenIds: [] })
  assert.equal(out.length, ids.length + 8, 'generate returns prompt + 8 tokens')
  log(`generated: ${JSON.stringify(tok.decode(out.slice(ids.length)))}`)

  // Asking for CUDA without the CUDA package is a clear error, not a crash.
  const e = await LlamaModel.fromPretrained(modelDir, { device: 'cuda' }).then(
    () => null,
    (err) => err,
  )
  assert.ok(e instanceof Error, 'device "cuda" without the CUDA package rejects')
  assert.match(e.message, /npm install peft-node-[a-z0-9-]+-cuda@/)
  log(`device "cuda" without the CUDA package: ${e.message.split('\n')[1]}`)

  model.dispose()
  log('ok')
}

module.exports = { smoke }
