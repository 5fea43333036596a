// The smoke test run by scripts/pack-test.mjs inside a fresh install of the packed tarballs.
// smoke.mjs (import) and smoke.cjs (require) both call this with what they imported, so the
// same checks run through both halves of the `exports` map.
'use strict'
const assert = require('node:assert/strict')
const path = require('node:path')

/** @param {{ LlamaModel: typeof import('peft-node').LlamaModel }} peft */
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

  // 3 training steps on the final norm weight: forward with labels, backward, a plain SGD
  // update. (No optimizer: the TS optimizers are not in the public API yet.)
  const name = 'model.norm.weight'
  const [, norm] = model.namedParameters().find(([n]) => n === name)
  norm.requiresGrad = true
  const losses = []
  for (let step = 0; step < 3; step++) {
    const { logits, loss } = await model.forward({ inputIds: [ids], labels: [ids] })
    const value = await loss.item()
    assert.ok(Number.isFinite(value), `step ${step}: loss is finite (${value})`)
    await loss.backward()
    const grad = norm.grad
    assert.ok(grad, `step ${step}: ${name} has a gradient`)
    const g = await grad.toFloat32Array()
    assert.ok(g.some((x) => x !== 0) && g.every(Number.isFinite), `step ${step}: the gradient is finite and non-zero`)
    const w = await norm.data.toFloat32Array()
    model.native.setParamData(name, w.map((x, i) => x - 0.5 * g[i]))
    model.zeroGrad()
    logits.dispose()
    loss.dispose()
    losses.push(value)
    log(`step ${step}: loss ${value.toFixed(5)}, |grad| ${Math.hypot(...g).toExponential(3)}`)
  }
  assert.ok(losses[2] < losses[0], `the loss goes down (${losses.map((l) => l.toFixed(5)).join(' -> ')})`)

  // TODO(LoRA): once getPeftModel/LoraConfig/PeftModel land in the public API, add here:
  //   const lora = getPeftModel(model, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'] }))
  //   3 LoRA steps (forward with labels, backward, AdamW step), check the loss goes down,
  //   await lora.savePretrained(<tmp dir>) and check adapter_config.json + adapter_model.safetensors,
  //   const back = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(modelDir), <tmp dir>)
  //   and check `back` gives the same logits as `lora`.

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
