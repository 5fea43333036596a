// The memory planner (src/plan/, docs/memory.md): its components on the tiny fixture against
// the loaded model and adapter, GGUF tensor sizes from the header against ggml's block sizes,
// the refusal that names the biggest component, the Trainer's pre-flight check, and `peft-node plan`.
import test from 'ava'
import { join } from 'node:path'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { LlamaModel, LoraConfig, getPeftModel, planMemory, checkPlanFits } from '../src'
import { native } from '../src/native'
import { typeBytes, layerActivationBytes, computePlan, ACTIVATION_CALIBRATION } from '../src/plan/formula'
import { shapeOf } from '../src/plan/model'
import { resolveOptions } from '../src/train/options'
import { checkTrainingMemory, longestRow } from '../src/train/memory-check'
import { main } from '../src/cli/main'
import { MODEL_DIR } from './helpers/fixtures'
import { capture } from './helpers/cli'
import { tempDir } from './helpers/temp'

const Q8_GGUF = join(__dirname, 'data', 'tiny-gguf', 'qwen2.q8_0.gguf')
const CONFIG = JSON.parse(readFileSync(join(MODEL_DIR, 'config.json'), 'utf8')) as Record<string, unknown>
const numel = (s: number[]) => s.reduce((a, b) => a * b, 1)
const planInput = () => ({
  shape: shapeOf(CONFIG, 'config'), tensors: [], batchSize: 1, seqLen: 8, trainableParameters: 0, adapterPaths: [],
  gradientCheckpointing: false, optimizer: 'adamw' as const, chunkedLoss: true, baselineBytes: 0, fileBytes: 0, keptInStorage: true,
})
const allLinear = () => new LoraConfig({ r: 4, targetModules: 'all-linear' })

test('tiny fixture: base weights, adapter, gradients and AdamW state match the loaded model and adapter', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), allLinear())
  t.teardown(() => peft.dispose())
  const trainable = peft.parameters({ trainableOnly: true }).reduce((a, p) => a + numel(p.shape), 0)
  const frozen = peft.parameters().filter((p) => !p.requiresGrad).reduce((a, p) => a + numel(p.shape), 0)
  const plan = planMemory(MODEL_DIR, { method: allLinear(), batchSize: 2, seqLen: 16 })
  t.is(plan.trainableParameters, trainable, 'the LoRA count from the config equals the built adapter')
  t.is(plan.components.baseWeights, frozen * 4, 'f32 base weights: 4 bytes each')
  t.is(plan.components.adapterWeights, trainable * 4)
  t.is(plan.components.gradients, trainable * 4)
  t.is(plan.components.optimizerState, trainable * 8, 'AdamW: two f32 moments')
  t.is(planMemory(MODEL_DIR, { method: allLinear(), optimizer: 'sgd' }).components.optimizerState, 0)
  const sum = Object.values(plan.components).reduce((a, b) => a + b, 0)
  t.is(plan.trainingTotal, sum)
  t.is(plan.loadPeak, plan.components.baseline + 2 * plan.components.baseWeights, 'an f32 file: the mapped file beside its copy')
  t.is(plan.total, Math.max(plan.trainingTotal, plan.loadPeak))
  // The model file holds exactly the planned bytes (plus its JSON header).
  t.true(statSync(join(MODEL_DIR, 'model.safetensors')).size - plan.components.baseWeights < 8192)
})

test('activations: per layer as counted, times the layers without checkpointing, one layer with it', (t) => {
  const s = shapeOf(CONFIG, 'config')
  const paths = [[64, 4], [32, 4], [32, 4], [64, 4], [160, 4], [160, 4], [64, 4]].map(([out, rank]) => ({ out, rank }))
  const layer = layerActivationBytes(s, 2, 16, paths)
  const c = { d: 6 * 64, q: 5 * 64, kv: 5 * 32, f: 4 * 160 }
  const byHand = (2 * 16 * (c.d + c.q + c.kv + c.f) + 1 * 2 * 4 * 16 * 16 + 2 * 16 * paths.reduce((a, p) => a + p.rank + p.out, 0)) * 4 * ACTIVATION_CALIBRATION
  t.is(layer, byHand)
  const inputs = 2 * 2 * 16 * 64 * 4 // each layer's input [b, l, d] in f32
  const plain = planMemory(CONFIG, { method: allLinear(), batchSize: 2, seqLen: 16 })
  const ckpt = planMemory(CONFIG, { method: allLinear(), batchSize: 2, seqLen: 16, gradientCheckpointing: true })
  t.is(plain.components.activations, 2 * layer + inputs)
  t.is(ckpt.components.activations, layer + inputs)
  t.true(ckpt.total <= plain.total)
  // The attention scores grow with l², the rest with b·l: doubling l more than doubles.
  const long = planMemory(CONFIG, { method: allLinear(), batchSize: 2, seqLen: 32 }).components.activations
  const wide = planMemory(CONFIG, { method: allLinear(), batchSize: 4, seqLen: 16 }).components.activations
  t.true(long > wide)
  t.is(wide, 2 * plain.components.activations)
})

test('GGUF: each tensor sized from the header as ggml stores it, nothing loaded', (t) => {
  // llama.cpp's q8_0 conversion of the tiny model falls back to F16 where a row (48, 112) is not
  // a multiple of 32, and keeps norms in F32: a file of mixed types, as real Q4_K_M files are.
  const g = native.ggufSummary(Q8_GGUF)
  t.true(g.tensors.some((x) => x.ggmlType === 'F16'))
  t.true(g.tensors.some((x) => x.ggmlType === 'F32'))
  for (const x of g.tensors) t.is(x.bytes, typeBytes(x.ggmlType, numel(x.shape)), x.name)
  const plan = planMemory(Q8_GGUF, { batchSize: 1, seqLen: 8 })
  t.is(plan.components.baseWeights, g.tensors.reduce((a, x) => a + x.bytes, 0))
  const f32 = planMemory(Q8_GGUF, { batchSize: 1, seqLen: 8, dtype: 'float32' })
  t.is(f32.components.baseWeights, g.tensors.reduce((a, x) => a + numel(x.shape) * 4, 0), 'loaded with a dtype: every weight in it')
  const asQ4 = planMemory(CONFIG, { baseType: 'Q4_0' })
  const matrices = planMemory(CONFIG).components.baseWeights - 4 * (2 * 2 * 64 + 64) // less the f32 norms
  t.is(asQ4.components.baseWeights, (matrices / 4 / 32) * 18 + 4 * (2 * 2 * 64 + 64), 'baseType: the matrices as Q4_0, norms f32')
  t.throws(() => planMemory(CONFIG, { baseType: 'Q3_X' }), { message: /tensor type "Q3_X" is not known/ })
  t.is(typeBytes('Q4_0', 64), 36)
  t.is(typeBytes('Q4_K', 512), 288)
  t.is(typeBytes('bfloat16', 10), 20)
  t.is(typeBytes('Q8_0', 64), 68)
  t.is(typeBytes('Q6K', 256), 210)
  // A quantized base adds a dequantization scratch per compute thread and the calling thread.
  const tensors = g.tensors.map((x) => ({ ...x, type: x.shape.length > 1 ? 'Q4_0' : x.ggmlType, bytes: undefined }))
  const q = computePlan({ ...planInput(), tensors })
  const f = computePlan({ ...planInput(), tensors: tensors.map((x) => ({ ...x, type: 'F32' })) })
  t.is(q.components.workspace - f.components.workspace, 2 * 4 * 2 ** 20, 'one compute thread unless told')
  const q4 = computePlan({ ...planInput(), tensors, computeThreads: 4 })
  t.is(q4.components.workspace - f.components.workspace, 5 * 4 * 2 ** 20, 'four compute threads and the caller')
  const big = { ...planInput(), shape: { ...planInput().shape, vocabSize: 2 ** 20 }, batchSize: 8, seqLen: 64 } // 2^29 logits
  const headQ = computePlan({ ...big, tensors: [{ name: 'lm_head.weight', shape: [2 ** 20, 64], type: 'Q4_0' }] })
  const headF = computePlan({ ...big, tensors: [{ name: 'lm_head.weight', shape: [2 ** 20, 64], type: 'F32' }] })
  t.is(headF.components.logitsLoss, 3 * 2 ** 23 * 4 + 8 * 64 * 64 * 4, 'one chunk of 2^23 logits, its softmax and gradient, and the final hidden states')
  t.is(headQ.components.logitsLoss, headF.components.logitsLoss, 'a QWeight head: chunks of the same size')
  t.is(q.components.logitsLoss, 3 * 8 * 384 * 4 + 8 * 64 * 4, 'a chunk holds at most every token\'s logits')
  t.is(q.components.baseWeights, tensors.reduce((a, x) => a + (x.shape.length > 1 ? (numel(x.shape) / 32) * 18 : numel(x.shape) * 4), 0))
})

test('a plan that does not fit is refused, naming the biggest component and what to change', (t) => {
  const big = planMemory(CONFIG, { method: allLinear(), batchSize: 64, seqLen: 512 })
  t.is(big.biggest, 'activations')
  const e = t.throws(() => checkPlanFits(big, big, { available: 2 ** 20 }))!
  t.regex(e.message, /^not enough memory: training needs about [\d.]+ (MiB|GiB) but 1\.0 MiB is available/)
  t.regex(e.message, /the biggest part is activations/)
  t.regex(e.message, /smaller batch size \(64 -> 32/)
  t.regex(e.message, /shorter sequence length \(maxSeqLength \/ --max-seq-length 512 -> 256\)/)
  t.regex(e.message, /gradient checkpointing/)
  t.regex(e.message, /memoryCheck: false/)
  const weights = planMemory({ ...CONFIG, vocab_size: 2_000_000 }, { batchSize: 1, seqLen: 4 })
  t.is(weights.biggest, 'baseWeights')
  t.regex(t.throws(() => checkPlanFits(weights, weights, { available: 2 ** 20, escape: '--no-memory-check' }))!.message, /biggest part is base weights.*quantized base.*--no-memory-check/)
  t.notThrows(() => checkPlanFits(big, big, { available: big.total }))
})

test('bad input names the argument or key', (t) => {
  t.throws(() => planMemory(MODEL_DIR, { seqLen: 0 }), { message: /planMemory: seqLen: expected an integer >= 1, found 0/ })
  t.throws(() => planMemory({ ...CONFIG, hidden_size: -1 }), { message: /`hidden_size` must be a positive integer, found -1/ })
  t.throws(() => planMemory(join(MODEL_DIR, 'nope')), { message: /no such file or folder/ })
  const dir = tempDir(t)
  t.throws(() => planMemory(dir), { message: /config\.json: missing/ })
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...CONFIG, torch_dtype: 'int3' }))
  t.throws(() => planMemory(dir), { message: /`torch_dtype` "int3" is not one of/ })
  t.throws(() => planMemory(CONFIG, { method: { peft_type: 'VERA' } }), { message: /VERA's trainable parameters are not estimated.*trainableParameters/ })
  t.throws(() => planMemory(CONFIG, { method: new LoraConfig({ targetModules: ['nothing'] }) }), { message: /matches none of the model's linear layers/ })
  t.throws(() => planMemory(CONFIG, { optimizer: 'adam' as 'adamw' }), { message: /optimizer: expected "adamw" or "sgd"/ })
})

test('Trainer pre-flight: the longest row and the refusal before training; memoryCheck must be a boolean', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), allLinear())
  t.teardown(() => peft.dispose())
  const examples = [{ inputIds: [1, 2, 3], labels: [1, 2, 3], where: 'a' }, { inputIds: Array(40).fill(1), labels: Array(40).fill(1), where: 'b' }]
  const o = resolveOptions({ train: examples, batchSize: 2 }, 0)
  t.is(o.memoryCheck, true)
  t.is(longestRow(o), 40)
  t.is(longestRow(resolveOptions({ train: examples, maxSeqLength: 16 }, 0)), 16)
  const e = t.throws(() => checkTrainingMemory(peft, o, 1024))!
  t.regex(e.message, /not enough memory: training needs about [\d.]+ (KiB|MiB) beyond the loaded model \([\d.]+ (KiB|MiB) in all\) but 1\.0 KiB is available \(the biggest part is .*memoryCheck: false \(--no-memory-check on the command line\)/)
  t.notThrows(() => checkTrainingMemory(peft, o, 2 ** 40))
  t.throws(() => resolveOptions({ train: examples, memoryCheck: 'no' as unknown as boolean }, 0), { message: 'memoryCheck: expected a boolean, found no' })
})

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = capture()
  const code = await main(args, io)
  return { code, out: io.text(), err: io.errors() }
}

test('peft-node plan prints each component and the total; refuses unknown options', async (t) => {
  const r = await run('plan', MODEL_DIR, '--batch-size', '2', '--seq-len', '16', '--r', '4', '--target-modules', 'all-linear')
  t.is(r.code, 0, r.err)
  const plan = planMemory(MODEL_DIR, { method: allLinear(), batchSize: 2, seqLen: 16 })
  t.regex(r.out, new RegExp(`batch 2 x 16 tokens, ${plan.trainableParameters.toLocaleString('en-US')} trainable parameters, gradient checkpointing off`))
  for (const label of ['process baseline', 'base weights', 'adapter weights', 'gradients', 'optimizer state', 'activations', 'logits/loss', 'workspace', 'training step', 'while loading', 'total (peak)']) {
    t.regex(r.out, new RegExp(`^  ${label.replace('(', '\\(').replace(')', '\\)')} +[\\d.]+ (KiB|MiB|GiB)`, 'm'), label)
  }
  t.regex(r.out, /biggest: .*; available now: [\d.]+ (MiB|GiB) \((fits|does not fit)\)/)
  const bad = await run('plan', '--model', MODEL_DIR, '--batch', '2')
  t.is(bad.code, 1)
  t.regex(bad.err, /^peft-node plan: --batch: not an option of `plan`/)
  const none = await run('plan')
  t.regex(none.err, /peft-node plan: --model is required/)
})

test('peft-node train refuses before loading when --max-seq-length cannot fit (and --no-memory-check skips it)', async (t) => {
  const data = join(tempDir(t), 'train.jsonl')
  writeFileSync(data, '{"text": "hello"}\n')
  const r = await run('train', '--model', MODEL_DIR, '--data', data, '--batch-size', '100000', '--max-seq-length', '100000', '--steps', '1')
  t.is(r.code, 1)
  t.regex(r.err, /^peft-node train: not enough memory: .*the biggest part is activations.*--no-memory-check/)
  t.is(r.out, '', 'nothing loaded or trained')
  // Skipped: the run goes on to load the model and reaches the Trainer's own option check.
  const skipped = await run('train', '--model', MODEL_DIR, '--data', data, '--batch-size', '100000', '--max-seq-length', '100000', '--steps', '1', '--learning-rate', '-1', '--no-memory-check')
  t.is(skipped.code, 1)
  t.regex(skipped.err, /learningRate: expected a number >= 0, found -1/)
  t.notRegex(skipped.err, /not enough memory/)
})
