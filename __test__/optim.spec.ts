import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AdamW, LlamaModel, SGD, clipGradNorm, createLoraPlusOptimizer, loraPlusParamGroups, type Parameter } from '../src'
import { FIXTURES, MODEL_DIR, expected, inputs } from './helpers/fixtures'

const inp = inputs()
const batch = { inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }
// Small parameters of both ranks, so the JS references stay cheap.
const SMALL = ['model.norm.weight', 'model.layers.1.self_attn.k_proj.weight', 'model.layers.0.post_attention_layernorm.weight']

/** The model with the named parameters trainable ('all': every one); returns those [name, Parameter]s. */
async function load(train: string[] | 'all'): Promise<{ model: LlamaModel; named: [string, Parameter][]; ps: Parameter[] }> {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const named = model.namedParameters().filter(([n]) => train === 'all' || train.includes(n))
  for (const [, p] of named) p.requiresGrad = true
  return { model, named, ps: named.map(([, p]) => p) }
}

/** forward with labels, backward; returns the loss. */
async function backward(model: LlamaModel): Promise<number> {
  const { logits, loss } = await model.forward(batch)
  await loss!.backward()
  const l = await loss!.item()
  logits.dispose()
  loss!.dispose()
  return l
}

const values = async (p: Parameter) => Float64Array.from(await p.data.toFloat32Array())
const grads = async (p: Parameter) => Float64Array.from(await p.grad!.toFloat32Array())
function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0
  for (let i = 0; i < b.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}

// float64 references of torch's update rules, one closure (holding its state) per parameter.
type Ref = (w: Float64Array, g: Float64Array) => void
function adamwRef(lr: number, [b1, b2]: number[], eps: number, wd: number): Ref {
  let m: Float64Array, v: Float64Array, t = 0
  return (w, g) => {
    m ??= new Float64Array(w.length)
    v ??= new Float64Array(w.length)
    t++
    const bc1 = 1 - b1 ** t, bc2 = Math.sqrt(1 - b2 ** t)
    for (let i = 0; i < w.length; i++) {
      w[i] *= 1 - lr * wd
      m[i] = b1 * m[i] + (1 - b1) * g[i]
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
      w[i] -= (lr / bc1) * (m[i] / (Math.sqrt(v[i]) / bc2 + eps))
    }
  }
}
function sgdRef(h: { lr: number; momentum?: number; dampening?: number; weightDecay?: number; nesterov?: boolean }): Ref {
  const { lr, momentum = 0, dampening = 0, weightDecay = 0, nesterov = false } = h
  let buf: Float64Array | undefined
  return (w, g0) => {
    const g = g0.map((x, i) => x + weightDecay * w[i])
    if (momentum !== 0) {
      buf = buf ? buf.map((b, i) => momentum * b + (1 - dampening) * g[i]) : g.slice()
      for (let i = 0; i < g.length; i++) g[i] = nesterov ? g[i] + momentum * buf[i] : buf[i]
    }
    for (let i = 0; i < w.length; i++) w[i] -= lr * g[i]
  }
}

/** 3 steps (fresh forward/backward each) of the optimizer and the references; worst |Δ|. */
async function againstReference(build: (ps: Parameter[]) => { opt: AdamW | SGD; refs: Ref[] }, steps = 3): Promise<number> {
  const { model, ps } = await load(SMALL)
  const w = await Promise.all(ps.map(values))
  const { opt, refs } = build(ps)
  for (let s = 0; s < steps; s++) {
    opt.zeroGrad()
    await backward(model)
    const g = await Promise.all(ps.map(grads))
    refs.forEach((ref, i) => ref(w[i], g[i]))
    await opt.step()
  }
  let worst = 0
  for (const [i, p] of ps.entries()) worst = Math.max(worst, maxAbs(await values(p), w[i]))
  model.dispose()
  return worst
}

test('full fine-tuning: two AdamW steps match torch.optim.AdamW (case full)', async (t) => {
  const { adamw } = JSON.parse(readFileSync(join(FIXTURES, 'cases', 'full', 'case.json'), 'utf8'))
  const exp = expected('full')
  const { model, named } = await load('all')
  const opt = new AdamW(named, { lr: adamw.lr, betas: adamw.betas, eps: adamw.eps, weightDecay: adamw.weight_decay })
  const losses: number[] = []
  for (let i = 0; i < 2; i++) {
    opt.zeroGrad()
    losses.push(await backward(model))
    t.deepEqual(await opt.step(), { skipped: false })
  }
  const lossErr = Math.abs(losses[1] - exp.get('loss_after_step1')!.data[0])
  let worst = 0
  for (const [name, p] of named) worst = Math.max(worst, maxAbs(await p.data.toFloat32Array(), exp.get(`after_step2.${name}`)!.data))
  t.log(`loss_after_step1 abs err ${lossErr.toExponential(2)}, after_step2 worst abs err ${worst.toExponential(2)} over ${named.length} params`)
  t.true(lossErr < 1e-4)
  t.true(worst < 1e-4)
  model.dispose()
})

test('AdamW with two groups matches a float64 reference over 3 steps', async (t) => {
  const worst = await againstReference((ps) => ({
    opt: new AdamW([{ params: ps.slice(0, 2), lr: 0.05, weightDecay: 0.1 }, { params: [ps[2]] }], { lr: 0.02, betas: [0.8, 0.99], eps: 1e-6 }),
    refs: [adamwRef(0.05, [0.8, 0.99], 1e-6, 0.1), adamwRef(0.05, [0.8, 0.99], 1e-6, 0.1), adamwRef(0.02, [0.8, 0.99], 1e-6, 0.01)],
  }))
  t.log(`AdamW worst abs err ${worst.toExponential(2)}`)
  t.true(worst < 1e-6)
})

const sgdCases = [
  { lr: 0.1 },
  { lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 },
  { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 0.05 },
]
for (const h of sgdCases) {
  test(`SGD ${JSON.stringify(h)} matches a float64 reference over 3 steps`, async (t) => {
    const worst = await againstReference((ps) => ({ opt: new SGD(ps, h), refs: ps.map(() => sgdRef(h)) }))
    t.log(`SGD worst abs err ${worst.toExponential(2)}`)
    t.true(worst < 1e-6)
  })
}

test('a group with lr 0 is unchanged; parameters without a gradient are skipped', async (t) => {
  const { model, ps } = await load(SMALL)
  const frozen = model.namedParameters().find(([n]) => n === 'model.layers.0.mlp.up_proj.weight')![1]
  const before = await Promise.all([...ps, frozen].map((p) => p.data.toFloat32Array()))
  const opt = new AdamW([{ params: [ps[0]], lr: 0 }, { params: [ps[1], ps[2], frozen] }], { lr: 0.01 })
  await backward(model)
  await opt.step()
  t.deepEqual(await ps[0].data.toFloat32Array(), before[0])
  t.notDeepEqual(await ps[1].data.toFloat32Array(), before[1])
  t.deepEqual(await frozen.data.toFloat32Array(), before[3])
  const sd = await opt.stateDict()
  t.deepEqual(Object.keys(sd.state), ['0', '1', '2'], 'no state for the parameter without a gradient')
  t.deepEqual(sd.param_groups.map((g) => [g.lr, g.weight_decay, g.params]), [[0, 0.01, [0]], [0.01, 0.01, [1, 2, 3]]])
  t.deepEqual(new AdamW([{ params: ps, lr: undefined }], { lr: 0.3 }).paramGroups[0].lr, 0.3, 'undefined means the default')
  t.throws(() => new AdamW([{ params: [ps[0]] }, { params: [ps[0]] }]), { message: /paramGroups\[1\]\.params: parameter "model\.layers\.0\.post_attention_layernorm\.weight" appears more than once/ })
  model.dispose()
})

test('LoRA+ groups follow PEFT: A, embedding, B, B without decay', (t) => {
  const p = (shape: number[], requiresGrad = true) => ({ shape, requiresGrad })
  const named: [string, ReturnType<typeof p>][] = [
    ['m.layers.0.q_proj.lora_A.default.weight', p([4, 64])],
    ['m.layers.0.q_proj.lora_B.default.weight', p([64, 4])],
    ['m.embed_tokens.lora_embedding_A.default', p([4, 384])],
    ['m.embed_tokens.lora_embedding_B.default', p([64, 4])],
    ['m.layers.0.q_proj.bias', p([64])],
    ['m.norm.weight', p([64])],
    ['m.layers.0.q_proj.base_layer.weight', p([64, 64], false)],
  ]
  const groups = loraPlusParamGroups(named, { lr: 1e-4, weightDecay: 0.1 })
  const idx = (x: object) => named.findIndex(([, q]) => q === x)
  t.deepEqual(groups.map((g) => [g.name, g.params.map(idx), g.lr, g.weightDecay]), [
    ['groupA', [0, 2], 1e-4, 0.1],
    ['embedding', [3], 1e-6, 0.1],
    ['groupB', [1, 5], 1e-4 * 16, 0.1],
    ['groupB_no_decay', [4], 1e-4 * 16, 0],
  ])
  t.is(loraPlusParamGroups(named, { lr: 1, loraPlusLrRatio: 4, loraPlusLrEmbedding: 0 })[2].lr, 4)
  t.throws(() => loraPlusParamGroups(named, { lr: 1, loraPlusLrRatio: 0 }), { message: /loraPlusLrRatio: expected a finite number > 0, found 0/ })
})

test('createLoraPlusOptimizer gives an AdamW over the LoRA+ groups of the trainable parameters', async (t) => {
  const { model } = await load(SMALL)
  const opt = createLoraPlusOptimizer(model.namedParameters(), { lr: 1e-3, loraPlusLrRatio: 8, betas: [0.9, 0.95] })
  t.true(opt instanceof AdamW)
  t.deepEqual(
    opt.paramGroups.map((g) => [g.name, g.params.map((p) => p.name), g.lr, g.weightDecay, g.betas]),
    [
      ['groupA', ['model.layers.1.self_attn.k_proj.weight'], 1e-3, 0, [0.9, 0.95]],
      ['embedding', [], 1e-6, 0, [0.9, 0.95]],
      ['groupB', ['model.layers.0.post_attention_layernorm.weight', 'model.norm.weight'], 8e-3, 0, [0.9, 0.95]],
      ['groupB_no_decay', [], 8e-3, 0, [0.9, 0.95]],
    ],
  )
  model.dispose()
})

const makers: [string, (ps: Parameter[]) => AdamW | SGD][] = [
  ['AdamW', (ps) => new AdamW(ps, { lr: 0.01 })],
  ['SGD', (ps) => new SGD(ps, { lr: 0.05, momentum: 0.9, dampening: 0.1 })],
]
for (const [kind, make] of makers) {
  test(`${kind}: stateDict → JSON → loadStateDict continues identically`, async (t) => {
    const a = await load(SMALL)
    const optA = make(a.ps)
    for (let i = 0; i < 2; i++) {
      optA.zeroGrad()
      await backward(a.model)
      await optA.step()
    }
    const json = JSON.stringify(await optA.stateDict())
    // A fresh model at A's current weights, and a fresh optimizer loaded from the JSON.
    const b = await load(SMALL)
    for (const [i, p] of b.ps.entries()) b.model.native.setParamData(p.name, Float64Array.from(await a.ps[i].data.toFloat32Array()))
    const optB = make(b.ps)
    optB.loadStateDict(JSON.parse(json))
    t.is(JSON.stringify(await optB.stateDict()), json)
    for (let i = 0; i < 2; i++) {
      for (const [model, opt] of [[a.model, optA], [b.model, optB]] as const) {
        opt.zeroGrad()
        await backward(model)
        await opt.step()
      }
    }
    for (const [i, p] of a.ps.entries()) t.deepEqual(await b.ps[i].data.toFloat32Array(), await p.data.toFloat32Array(), p.name)
    a.model.dispose()
    b.model.dispose()
  })
}

test('loadStateDict validates groups, indices, shapes and sizes before changing anything', async (t) => {
  const { model, ps } = await load(SMALL)
  const opt = new AdamW(ps, { lr: 0.01 })
  await backward(model)
  await opt.step()
  const good = JSON.stringify(await opt.stateDict())
  const bad = (edit: (sd: any) => void) => {
    const sd = JSON.parse(good)
    edit(sd)
    return () => opt.loadStateDict(sd)
  }
  t.throws(bad((sd) => (sd.state['1'].exp_avg.shape = [64, 32])), { message: /state\["1"\] \("model\.layers\.1\.self_attn\.k_proj\.weight"\)\.exp_avg: expected shape \[32, 64\] \(the parameter's\), found \[64, 32\]/ })
  t.throws(bad((sd) => (sd.state['0'].exp_avg_sq.data = sd.state['0'].exp_avg_sq.data.slice(8))), { message: /exp_avg_sq\.data: expected 64 float32 values \(256 bytes\), found 250 bytes/ })
  t.throws(bad((sd) => (sd.state['0'].step = -1)), { message: /state\["0"\].*\.step: expected an integer >= 0, found -1/ })
  t.throws(bad((sd) => delete sd.state['2'].exp_avg), { message: /expected an "exp_avg" tensor/ })
  t.throws(bad((sd) => sd.param_groups.push({ ...sd.param_groups[0] })), { message: /expected 1 parameter groups, found 2/ })
  t.throws(bad((sd) => sd.param_groups[0].params.pop()), { message: /param_groups\[0\]\.params: expected 3 indices, found \[0, 1\]/ })
  t.throws(bad((sd) => (sd.state['7'] = sd.state['0'])), { message: /state\["7"\]: no parameter has index 7/ })
  t.throws(bad((sd) => (sd.param_groups[0].betas = [0.9, 1])), { message: /param_groups\[0\]\.betas: expected two numbers/ })
  t.throws(() => opt.loadStateDict(null as any), { message: /expected \{ state, param_groups \}/ })
  t.is(JSON.stringify(await opt.stateDict()), good, 'a rejected load changed nothing')
  model.dispose()
})

test('clipGradNorm returns the global norm and scales gradients down to maxNorm, never up', async (t) => {
  const { model, ps } = await load(SMALL)
  await backward(model)
  const g0 = await Promise.all(ps.map(grads))
  const norm = Math.sqrt(g0.reduce((s, g) => s + g.reduce((a, x) => a + x * x, 0), 0))
  const got = await clipGradNorm(ps, 1e9)
  t.log(`norm ${norm.toExponential(4)}, rel err ${(Math.abs(got - norm) / norm).toExponential(2)}`)
  t.true(Math.abs(got - norm) / norm < 1e-6)
  for (const [i, p] of ps.entries()) t.deepEqual(await grads(p), g0[i], 'no change when under maxNorm')
  const maxNorm = norm / 4
  t.true(Math.abs((await clipGradNorm(model.namedParameters().filter(([n]) => SMALL.includes(n)), maxNorm)) - norm) / norm < 1e-6)
  const g1 = await Promise.all(ps.map(grads))
  const after = Math.sqrt(g1.reduce((s, g) => s + g.reduce((a, x) => a + x * x, 0), 0))
  t.true(Math.abs(after - maxNorm) / maxNorm < 1e-5, `norm after clipping ${after} vs ${maxNorm}`)
  const scale = maxNorm / (norm + 1e-6)
  t.true(g1.every((g, i) => maxAbs(g, g0[i].map((x) => x * scale)) < 1e-6), 'every gradient scaled by the same factor')
  model.native.scaleGrads([ps[1].name], NaN)
  t.true(Number.isNaN(await clipGradNorm(ps, 1)))
  await t.throwsAsync(clipGradNorm(ps, 1, { errorIfNonfinite: true }), { message: /clipGradNorm: the total norm of the gradients is NaN/ })
  await t.throwsAsync(clipGradNorm(ps, 0), { message: /clipGradNorm: maxNorm: expected a number > 0 \(Infinity allowed\), found 0/ })
  model.dispose()
})

test('a step with NaN/Inf gradients is refused naming the parameter, or skipped with skipNonFinite', async (t) => {
  const { model, ps } = await load(SMALL)
  const before = await Promise.all(ps.map((p) => p.data.toFloat32Array()))
  await backward(model)
  model.native.scaleGrads([ps[1].name], NaN)
  const strict = new AdamW(ps)
  await t.throwsAsync(strict.step(), { message: /AdamW\.step\(\): the gradient of "model\.layers\.1\.self_attn\.k_proj\.weight" holds NaN; no parameter was changed/ })
  const lenient = new SGD(ps, { lr: 0.1, momentum: 0.9, skipNonFinite: true })
  t.deepEqual(await lenient.step(), { skipped: true, parameter: ps[1].name, reason: `the gradient of "${ps[1].name}" holds NaN` })
  t.is(lenient.skippedSteps, 1)
  for (const [i, p] of ps.entries()) t.deepEqual(await p.data.toFloat32Array(), before[i])
  t.deepEqual(Object.keys((await lenient.stateDict()).state), [], 'no state was created')
  // Inf in one gradient is found as well, and named.
  model.zeroGrad()
  await backward(model)
  model.native.scaleGrads([ps[2].name], Infinity)
  await t.throwsAsync(strict.step(), { message: /the gradient of "model\.norm\.weight" holds Inf/ })
  // A NaN weight makes every gradient NaN: the first parameter (in group order) is named.
  model.zeroGrad()
  model.native.setParamData(ps[2].name, new Float64Array(ps[2].numel).fill(NaN))
  await backward(model)
  await t.throwsAsync(strict.step(), { message: /the gradient of "model\.layers\.0\.post_attention_layernorm\.weight" holds NaN/ })
  model.dispose()
})

test('bad arguments fail clearly, naming the argument and what was expected', async (t) => {
  const { model, ps } = await load(SMALL)
  const cases: [() => unknown, RegExp][] = [
    [() => new AdamW(ps, { lr: -1 }), /AdamW\.lr: expected a finite number >= 0, found -1/],
    [() => new AdamW(ps, { betas: [0.9, 1] }), /AdamW\.betas: expected two numbers \[beta1, beta2\], each in \[0, 1\), found \[0\.9, 1\]/],
    [() => new AdamW(ps, { eps: -1e-8 }), /AdamW\.eps: expected a finite number >= 0/],
    [() => new AdamW(ps, { weightDecay: NaN }), /AdamW\.weightDecay: expected a finite number >= 0, found NaN/],
    [() => new AdamW([{ params: ps, lr: -0.1 }]), /AdamW: paramGroups\[0\]\.lr: expected a finite number >= 0, found -0\.1/],
    [() => new AdamW([]), /AdamW: params: expected at least one parameter or parameter group, found an empty list/],
    [() => new AdamW([ps[0], { params: [ps[1]] }] as any), /found a mix of both/],
    [() => new AdamW(['model.norm.weight'] as any), /AdamW: params\[0\]: expected a Parameter or a \[name, Parameter\] pair, found "model\.norm\.weight"/],
    [() => new AdamW(ps, 0.1 as any), /AdamW: options: expected an options object, found 0\.1/],
    [() => new SGD(ps, { momentum: -0.5 }), /SGD\.momentum: expected a finite number >= 0, found -0\.5/],
    [() => new SGD(ps, { nesterov: true }), /SGD\.nesterov: Nesterov momentum requires momentum > 0 and dampening 0, found momentum 0 and dampening 0/],
    [() => new SGD(ps, { momentum: 0.9, dampening: 0.1, nesterov: true }), /requires momentum > 0 and dampening 0/],
    [() => new SGD(ps, { dampening: 2 }), /SGD\.dampening: expected a number in \[0, 1\], found 2/],
    [() => new SGD(ps, { skipNonFinite: 1 as any }), /SGD: skipNonFinite: expected a boolean, found 1/],
  ]
  for (const [f, message] of cases) t.throws(f, { message })
  const opt = new AdamW(ps)
  opt.paramGroups[0].lr = NaN // mutable for schedules, but checked again at each step
  await backward(model)
  await t.throwsAsync(opt.step(), { message: /AdamW: paramGroups\[0\]\.lr: expected a finite number >= 0, found NaN/ })
  model.dispose()
})
