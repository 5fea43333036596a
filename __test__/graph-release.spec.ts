// backward() frees the autograd graph it ran through, as PyTorch's default retain_graph=False:
// the loss and the logits of that forward keep only their own data, and a second backward is
// refused unless the first asked for { retainGraph: true }.
import test from 'ava'
import { LlamaModel } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'

const NORM = 'model.norm.weight'

/** The fixture model with only the final norm trainable (cheap, and a loss that needs grads). */
async function normModel(): Promise<LlamaModel> {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  for (const [name, p] of model.namedParameters()) p.requiresGrad = name === NORM
  return model
}

function forward(model: LlamaModel) {
  const inp = inputs()
  return model.forward({ inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels })
}

async function normGrad(model: LlamaModel): Promise<Float32Array> {
  return model.namedParameters().find(([n]) => n === NORM)![1].grad!.toFloat32Array()
}

const FREED = /backward: the graph of this loss was freed by the first backward\(\); pass \{ retainGraph: true \}/

test('a second backward() on the same loss is an error, and adds nothing', async (t) => {
  const model = await normModel()
  const { loss } = await forward(model)
  await loss!.backward()
  const once = await normGrad(model)
  const e = await t.throwsAsync(loss!.backward())
  t.regex(e!.message, FREED)
  t.deepEqual(await normGrad(model), once)
  model.dispose()
})

test('a second backward() started before the first finished is refused too', async (t) => {
  const model = await normModel()
  const { loss } = await forward(model)
  const first = loss!.backward()
  await t.throwsAsync(loss!.backward(), { message: FREED })
  await first
  model.dispose()
})

test('backward({ retainGraph: true }) allows a second backward, which adds the same gradient', async (t) => {
  const model = await normModel()
  const { loss } = await forward(model)
  await loss!.backward({ retainGraph: true })
  const once = await normGrad(model)
  await loss!.backward()
  const twice = await normGrad(model)
  t.true(once.some((x) => x !== 0))
  t.true(twice.every((x, i) => Math.abs(x - 2 * once[i]) <= 1e-6 * Math.max(1, Math.abs(x))))
  // That second backward had no retainGraph: now the graph is gone.
  await t.throwsAsync(loss!.backward(), { message: FREED })
  model.dispose()
})

test('after backward, the loss and the logits keep their values (only the graph is freed)', async (t) => {
  const model = await normModel()
  const { logits, loss } = await forward(model)
  const [before, lossBefore] = [await logits.toFloat32Array(), await loss!.item()]
  await loss!.backward()
  t.false(logits.disposed)
  t.false(loss!.disposed)
  t.deepEqual(await logits.toFloat32Array(), before)
  t.is(await loss!.item(), lossBefore)
  model.dispose()
})

test('a scaled loss shares its forward graph: backward through it frees the loss too', async (t) => {
  const model = await normModel()
  const { loss } = await forward(model)
  await loss!.mul(0.5).backward()
  await t.throwsAsync(loss!.backward(), { message: FREED })
  model.dispose()
})

test('a bad retainGraph is an Error naming it', async (t) => {
  const model = await normModel()
  const { loss } = await forward(model)
  await t.throwsAsync(loss!.backward({ retainGraph: 'yes' as unknown as boolean }), { message: /backward: retainGraph: expected a boolean, found string/ })
  await t.throwsAsync(loss!.backward(null as unknown as {}), { message: /backward: options: expected an object, found null/ })
  await loss!.backward() // the refused calls freed nothing
  model.dispose()
})
