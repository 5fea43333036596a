// backward() frees the autograd graph it ran through, as PyTorch's default retain_graph=False:
// the loss and the logits of that forward keep only their own data, and a second backward is
// refused unless the first asked for { retainGraph: true }.
import test from 'ava'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { join } from 'node:path'
import { LlamaModel } from '../src'
import { writeRandomLlama } from '../bench/make-model'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

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

// A model whose per-step graph (~300 MB of saved activations) dwarfs its logits (vocab 256, so
// the logits a README loop leaves for the GC stay a few MB): what is measured is the graph.
const LOOP_MODEL = { hidden_size: 256, intermediate_size: 768, num_hidden_layers: 6, vocab_size: 256, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 64 }

/** The peak RSS of a child process running the 20-step loop (one loop per process). */
async function peakOf(dir: string, mode: 'readme' | 'dispose'): Promise<number> {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import=tsx', join(__dirname, 'helpers', 'graph-loop.ts'), dir, mode, '20'])
  return JSON.parse(stdout.trim().split('\n').pop()!).peakBytes
}

test('a 20-step README loop (no dispose) peaks like the same loop with logits.dispose(); loss.dispose()', async (t) => {
  const dir = tempDir(t, 'peft-node-graph-')
  writeRandomLlama(dir, { batch: 4, seq: 128, config: LOOP_MODEL })
  // One after the other: two loops at once on a small machine would slow both.
  const readme = await peakOf(dir, 'readme')
  const disposed = await peakOf(dir, 'dispose')
  t.log(`peak RSS: README loop ${(readme / 2 ** 20).toFixed(0)} MiB, dispose loop ${(disposed / 2 ** 20).toFixed(0)} MiB (ratio ${(readme / disposed).toFixed(2)})`)
  t.true(readme <= 1.1 * disposed)
})
