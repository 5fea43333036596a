// Gradient checkpointing and the chunked loss from TypeScript: the same gradients as the plain
// path (dropout in training mode included), `returnLogits: false` gives the loss alone, and the
// Trainer / CLI options reach the model. The numerics are tested in the core (checkpointing.rs,
// chunked_loss.rs, f64); this checks the plumbing, where a missed gradient would hide.
import test from 'ava'
import { LlamaModel, LoraConfig, PeftModel, Trainer, getPeftModel } from '../src'
import { normalise } from '../src/cli/config'
import { MODEL_DIR, inputs, relErr } from './helpers/fixtures'

const batch = () => ({ inputIds: inputs().input_ids, attentionMask: inputs().attention_mask, labels: inputs().labels })

async function lora(): Promise<PeftModel> {
  const cfg = new LoraConfig({ r: 4, loraAlpha: 8, loraDropout: 0.2, targetModules: ['q_proj', 'v_proj', 'down_proj'], initLoraWeights: false })
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), cfg, { seed: 3 })
  peft.train()
  return peft
}

/** Loss and every trainable gradient after one forward + backward. */
async function step(peft: PeftModel, returnLogits: boolean): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  peft.zeroGrad()
  const out = returnLogits ? await peft.forward({ ...batch(), dropoutSeed: 9 }) : await peft.forward({ ...batch(), dropoutSeed: 9, returnLogits: false })
  const loss = await out.loss!.item()
  await out.loss!.backward()
  const grads = new Map<string, Float32Array>()
  for (const [name, p] of peft.namedParameters({ trainableOnly: true })) {
    const g = p.grad
    if (!g) throw new Error(`no gradient for ${name}`)
    grads.set(name, await g.toFloat32Array())
  }
  return { loss, grads }
}

function worst(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  let w = 0
  for (const [name, x] of a) w = Math.max(w, relErr(x, b.get(name)!))
  return w
}

test('gradientCheckpointingEnable: same loss and gradients, dropout included', async (t) => {
  const peft = await lora()
  const plain = await step(peft, true)
  t.false(peft.isGradientCheckpointing)
  peft.gradientCheckpointingEnable()
  t.true(peft.isGradientCheckpointing)
  const checkpointed = await step(peft, true)
  peft.gradientCheckpointingDisable()
  t.false(peft.isGradientCheckpointing)
  t.is(plain.grads.size, 12) // q, v, down in 2 layers, A and B each
  t.is(checkpointed.loss, plain.loss)
  const d = worst(checkpointed.grads, plain.grads)
  t.log(`max relative gradient difference (f32): ${d}`)
  t.true(d < 1e-6, `${d}`)
})

test('returnLogits: false gives the loss alone, with the gradients of the logits path', async (t) => {
  const peft = await lora()
  const full = await step(peft, true)
  const chunked = await step(peft, false)
  peft.gradientCheckpointingEnable()
  const both = await step(peft, false)
  t.true(Math.abs(chunked.loss - full.loss) < 1e-6 * full.loss)
  const d = worst(chunked.grads, full.grads)
  const d2 = worst(both.grads, full.grads)
  t.log(`max relative gradient difference (f32): chunked ${d}, chunked + checkpointing ${d2}`)
  t.true(d < 1e-5 && d2 < 1e-5, `${d} ${d2}`)
  const out = await peft.forward({ ...batch(), returnLogits: false })
  t.deepEqual(Object.keys(out), ['loss'])
  out.loss.dispose()
  await t.throwsAsync(peft.forward({ inputIds: batch().inputIds, returnLogits: false }), { message: /returnLogits: false needs `labels`/ })
})

test('Trainer gradientCheckpointing: enables it on the model; bad values name the option', async (t) => {
  const peft = await lora()
  const train = [{ inputIds: [5, 6, 7, 8, 9], labels: [5, 6, 7, 8, 9], where: 'test' }]
  t.throws(() => new Trainer(peft, { train, gradientCheckpointing: 'yes' as unknown as boolean }), { message: /gradientCheckpointing: expected a boolean/ })
  await new Trainer(peft, { train, maxSteps: 1, batchSize: 1, gradientCheckpointing: true }).train()
  t.true(peft.isGradientCheckpointing)
})

test('CLI: --grad-checkpoint (mlx-lm) is the Trainer option', (t) => {
  t.deepEqual(normalise({ 'grad-checkpoint': true }), { gradientCheckpointing: true })
  t.deepEqual(normalise({ grad_checkpoint: true }), { gradientCheckpointing: true })
})
