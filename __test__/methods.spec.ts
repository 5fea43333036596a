// One contract over every method (a row each) and every architecture: shapes, gradients reach
// every trainable parameter, finite differences in float64, save/load, merge, disable, and training.
// LLaMA runs every row; the other architectures the rows of each kind of hook site.
import test from 'ava'
import { join } from 'node:path'
import * as peftNode from '../src'
import { AdamW, AutoModelForCausalLM, type LlamaModel, PeftModel, getPeftModel, type PeftConfig } from '../src'
import { FIXTURES } from './helpers/fixtures'
import { Fixture } from './helpers/fixture-runner'
import { tempDir } from './helpers/temp'

/** The architectures the contract runs on, with the module names their rows target. */
interface Arch {
  name: string
  fx: Fixture
  qv: string[]
  ia3: { targetModules: string[]; feedforwardModules: string[] }
  /** LN tuning's targets where PEFT has no default for the architecture (phi3). */
  ln?: string[]
  /** Only these rows (all when absent): the contract's LLaMA run covers every method. */
  rows?: string[]
}
const ARCH_ROOT = join(FIXTURES, '..', 'hf-peft-tiny-arch')
const ARCH_ROWS = ['LoRA', 'DoRA', 'IA3', 'prompt tuning', 'prefix tuning', 'LN tuning', 'bottleneck adapter']
const llamaLike = (name: string): Arch => ({
  name,
  fx: new Fixture(join(ARCH_ROOT, name)),
  qv: ['q_proj', 'v_proj'],
  ia3: { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] },
  rows: ARCH_ROWS,
})
const ARCHS: Arch[] = [
  { ...llamaLike('llama'), fx: new Fixture(FIXTURES), rows: undefined },
  ...['qwen2', 'qwen3', 'mistral', 'gemma3'].map(llamaLike),
  { ...llamaLike('phi3'), qv: ['qkv_proj'], ia3: { targetModules: ['qkv_proj', 'down_proj'], feedforwardModules: ['down_proj'] }, ln: ['input_layernorm', 'post_attention_layernorm', 'norm'] },
]

interface Row {
  name: string
  config: (a: Arch) => PeftConfig
  canMerge: boolean
  /** Virtual tokens prepended to the logits. */
  virtual?: number
  /** Which parameter the finite-difference check perturbs (default: the first). */
  fdParam?: RegExp
}

const ROWS: Row[] = [
  { name: 'LoRA', config: (a) => new peftNode.LoraConfig({ r: 4, targetModules: a.qv }), canMerge: true },
  { name: 'rsLoRA all-linear', config: (a) => new peftNode.LoraConfig({ r: 4, useRslora: true, targetModules: 'all-linear' }), canMerge: true },
  // PEFT detaches DoRA's weight norm (paper §4.3), so A and B get that gradient, not the
  // exact derivative; the magnitude vector's gradient is exact and is the one checked.
  { name: 'DoRA', config: (a) => new peftNode.LoraConfig({ r: 4, useDora: true, targetModules: a.qv }), canMerge: true, fdParam: /lora_magnitude_vector/ },
  { name: 'IA3', config: (a) => new peftNode.IA3Config(a.ia3), canMerge: true },
  { name: 'VeRA', config: (a) => new peftNode.VeraConfig({ r: 4, targetModules: a.qv }), canMerge: true },
  { name: 'LoHa', config: (a) => new peftNode.LoHaConfig({ r: 4, alpha: 4, targetModules: a.qv }), canMerge: true },
  { name: 'LoKr', config: (a) => new peftNode.LoKrConfig({ r: 4, alpha: 4, targetModules: a.qv }), canMerge: true },
  { name: 'AdaLoRA', config: (a) => new peftNode.AdaLoraConfig({ initR: 4, targetR: 2, totalStep: 100, targetModules: a.qv }), canMerge: true },
  // The hook methods (prompt, norm and sublayer sites). Prompt tuning and p-tuning prepend
  // their virtual tokens to the logits; none of these but LN tuning, bias tuning and SSF on
  // linears folds into base weights.
  { name: 'prompt tuning', config: (a) => new peftNode.PromptTuningConfig({ numVirtualTokens: 3 }), canMerge: false, virtual: 3 },
  { name: 'prefix tuning', config: (a) => new peftNode.PrefixTuningConfig({ numVirtualTokens: 3 }), canMerge: false },
  // With the reparameterisation MLP the prefixes are its output: check its first layer.
  { name: 'prefix tuning + projection', config: (a) => new peftNode.PrefixTuningConfig({ numVirtualTokens: 3, prefixProjection: true, encoderHiddenSize: 16 }), canMerge: false, fdParam: /transform\.0\.weight/ },
  { name: 'p-tuning', config: (a) => new peftNode.PromptEncoderConfig({ numVirtualTokens: 3, encoderHiddenSize: 16 }), canMerge: false, virtual: 3, fdParam: /mlp_head\.0\.weight/ },
  { name: 'LN tuning', config: (a) => new peftNode.LNTuningConfig(a.ln ? { targetModules: a.ln } : {}), canMerge: true },
  { name: 'bottleneck adapter', config: (a) => new peftNode.BottleneckAdapterConfig({ bottleneckSize: 8 }), canMerge: false, fdParam: /adapter_down\.default\.weight/ },
  { name: 'parallel adapter', config: (a) => new peftNode.ParallelAdapterConfig({ bottleneckSize: 8 }), canMerge: false, fdParam: /adapter_down\.default\.weight/ },
  { name: 'SSF on linears', config: (a) => new peftNode.SsfConfig({ targetModules: a.qv }), canMerge: true, fdParam: /ssf_scale/ },
  // After an RMSNorm (no bias to fold the shift into) SSF cannot merge.
  { name: 'SSF with norms', config: (a) => new peftNode.SsfConfig(), canMerge: false, fdParam: /layernorm\.ssf_shift/ },
  { name: 'bias tuning', config: (a) => new peftNode.BiasTuningConfig({ targetModules: a.qv }), canMerge: true },
  // The contract runs in evaluation mode (no `train()`), where DyLoRA uses evalRank (= r)
  // with no rank detached, so every row of A and column of B is in the graph and the
  // "every trainable parameter gets a gradient" check covers all ranks. Sampled ranks and
  // the frozen mode (training only) are checked in __test__/dylora.spec.ts and dylora.rs.
  { name: 'DyLoRA', config: (a) => new peftNode.DyLoraConfig({ r: 4, rMin: 1, targetModules: a.qv }), canMerge: true },
  // Prefixes are attended to, not prepended to the logits: no virtual positions.
  { name: 'MAM adapter', config: (a) => new peftNode.MamAdapterConfig({ numVirtualTokens: 4, bottleneckSize: 8 }), canMerge: false },
  { name: 'UniPELT', config: (a) => new peftNode.UniPeltConfig({ numVirtualTokens: 4, r: 4, loraAlpha: 4, bottleneckSize: 8 }), canMerge: false, fdParam: /gate_prefix/ },
  { name: 'SparseMask (magnitude)', config: (a) => new peftNode.SparseMaskConfig({ density: 0.05, targetModules: a.qv }), canMerge: true },
  { name: 'PaFi (smallest magnitude)', config: (a) => new peftNode.PaFiConfig({ density: 0.05, targetModules: a.qv }), canMerge: true },
  // Mixtures and LoRA improvements (survey issue 16). The routers' gradients are what the
  // finite differences check for MoLoRA and MoV (the gates are the new part).
  { name: 'MoSLoRA', config: (a) => new peftNode.MoSLoraConfig({ r: 4, loraAlpha: 8, targetModules: a.qv }), canMerge: true, fdParam: /lora_AB/ },
  { name: 'MoLoRA', config: (a) => new peftNode.MoLoraConfig({ r: 2, numExperts: 3, targetModules: a.qv }), canMerge: false, fdParam: /lora_router/ },
  { name: 'MoV', config: (a) => new peftNode.MoVConfig({ numExperts: 3 }), canMerge: false, fdParam: /mov_router/ },
  // Top-2 of 3 experts: the router learns through the renormalised top-k gates; the finite
  // differences on it check that gradient (the balance loss is added in training mode only).
  // Evaluation (the contract's forwards) runs the unmasked LoRA; training draws the masks.
  { name: 'LoRA Dropout', config: (a) => new peftNode.LoraDropoutConfig({ r: 4, paramDropout: 0.3, targetModules: a.qv }), canMerge: true },
  { name: 'SoRA', config: (a) => new peftNode.SoraConfig({ r: 4, targetModules: a.qv }), canMerge: true, fdParam: /sora_gate/ },
  { name: 'Child-tuning (D)', config: (a) => new peftNode.ChildTuningConfig({ childRatio: 0.3, targetModules: a.qv }), canMerge: true },
  // The shared Kronecker rule Aᵢ is the new part: the finite differences check it.
  { name: 'Compacter', config: (a) => new peftNode.CompacterConfig({ bottleneckSize: 8, phmDim: 4 }), canMerge: false, fdParam: /compacter_rule/ },
  // The offsets' factor A is what the finite differences check (B starts at 0; one step moves it).
  { name: 'DePT', config: (a) => new peftNode.DeptConfig({ numVirtualTokens: 3, r: 4, maxLength: 32 }), canMerge: false, virtual: 3, fdParam: /dept_A/ },
  { name: 'MixLoRA', config: (a) => new peftNode.MixLoraConfig({ r: 2, numExperts: 3, topK: 2 }), canMerge: false, fdParam: /mixlora_router/ },
  // Survey methods, part A (issue 16). Built from a config alone, the fused adapters / LoRA
  // experts are random and frozen (buffers): the contract checks the trained fusion and gates.
  // MoLE on all linears: its gates alone fit the training check's batch.
  { name: 'AdapterFusion', config: (a) => new peftNode.AdapterFusionConfig({ numAdapters: 3, bottleneckSize: 8 }), canMerge: false, fdParam: /fusion_query/ },
  { name: 'MoLE', config: (a) => new peftNode.MoleConfig({ r: 4, numExperts: 4, targetModules: 'all-linear' }), canMerge: false, fdParam: /mole_gate/ },
  // Evaluation averages the experts' weights, so each expert's slice gets its share of the gradient.
  { name: 'AdaMix', config: (a) => new peftNode.AdaMixConfig({ numExperts: 3, bottleneckSize: 8 }), canMerge: false, fdParam: /adamix_down\./ },
  // Instance-dependent prompts: the router (SMoP, top-1 without noise in evaluation) and the
  // generator's down-projection (IDPG) are the new parts the finite differences check.
  { name: 'SMoP', config: (a) => new peftNode.SmopConfig({ numVirtualTokens: 3, numPrompts: 2 }), canMerge: false, virtual: 3, fdParam: /smop_router/ },
  { name: 'IDPG', config: (a) => new peftNode.IdpgConfig({ numVirtualTokens: 3, generatorHidden: 8 }), canMerge: false, virtual: 3, fdParam: /idpg_down\./ },
  { name: 'Prefix-Propagation', config: (a) => new peftNode.PrefixPropagationConfig({ numVirtualTokens: 3 }), canMerge: false, virtual: 3, fdParam: /prefix_propagation/ },
  // Survey methods, part B (issue 16). The masks start all ones (their procedures run in the
  // Trainer: survey-masks.spec), so every entry of the deltas gets a gradient here.
  { name: 'FAR', config: (a) => new peftNode.FarConfig({ trainableRatio: 0.25 }), canMerge: true },
  { name: 'LT-SFT', config: (a) => new peftNode.LtSftConfig({ density: 0.1, targetModules: a.qv }), canMerge: true },
  { name: 'Fish-Dip', config: (a) => new peftNode.FishDipConfig({ density: 0.1, targetModules: a.qv }), canMerge: true },
  { name: 'PeriodicLoRA', config: (a) => new peftNode.PeriodicLoraConfig({ r: 4, mergeEvery: 5, targetModules: a.qv }), canMerge: true },
  // The gates' log α is the new part: the finite differences check it (evaluation's gates).
  { name: 'Intrinsic SAID', config: (a) => new peftNode.IntrinsicSaidConfig({ intrinsicDim: 50, targetModules: a.qv }), canMerge: true, fdParam: /said_theta/ },
  { name: 'structured diff pruning', config: (a) => new peftNode.SDiffPruningConfig({ targetModules: a.qv }), canMerge: true, fdParam: /diff_log_alpha/ },
  // Laplace-LoRA (issue 16): a LoRA adapter (gradients, save, merge as LoRA); its fit + predict
  // round trip is the test after the contract below.
  { name: 'Laplace-LoRA', config: (a) => new peftNode.LoraConfig({ r: 4, targetModules: a.qv }), canMerge: true },
  // LPT (issue 16): the generator's down-projection, fed the middle layer's hidden states.
  { name: 'LPT', config: (a) => new peftNode.LptConfig({ numVirtualTokens: 3, generatorHidden: 8 }), canMerge: false, virtual: 3, fdParam: /lpt_down\./ },
]

for (const arch of ARCHS) {
  const fx = arch.fx
  const inp = fx.inputs()
  const [rows, seq] = [inp.input_ids.length, inp.input_ids[0].length]
  const batch = () => ({ inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels })
  const load = (dtype: 'float32' | 'float64' = 'float32') => AutoModelForCausalLM.fromPretrained(fx.modelDir, { dtype })
  const attach = async (row: Row, dtype: 'float32' | 'float64' = 'float32'): Promise<PeftModel> => getPeftModel(await load(dtype), row.config(arch), { seed: 1 })

  async function trainSteps(peft: PeftModel, steps: number, lr: number): Promise<number[]> {
    const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr, weightDecay: 0 })
    const losses: number[] = []
    for (let i = 0; i < steps; i++) {
      opt.zeroGrad()
      const { loss } = await peft.forward(batch())
      losses.push(await loss!.item())
      await loss!.backward()
      await opt.step()
    }
    opt.zeroGrad()
    return losses
  }

  const logitsOf = async (m: PeftModel | LlamaModel) => (await m.forward({ inputIds: inp.input_ids })).logits.toFloat64Array()
  const maxDiff = (a: Float64Array, b: Float64Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)
  /** The logits [rows, virtual + seq, vocab] without the virtual positions. */
  const realPositions = (logits: Float64Array, virtual: number, vocab: number) => {
    const row = (virtual + seq) * vocab
    return Float64Array.from({ length: rows * seq * vocab }, (_, i) => logits[Math.floor(i / (seq * vocab)) * row + virtual * vocab + (i % (seq * vocab))])
  }

  for (const row of ROWS.filter((r) => !arch.rows || arch.rows.includes(r.name))) {
    const title = arch.name === 'llama' ? row.name : `${arch.name}: ${row.name}`
    test(`${title}: shapes, gradients everywhere, finite differences`, async (t) => {
      const peft = await attach(row, 'float64')
      const { logits } = await peft.forward(batch())
      const vocab = peft.config.vocab_size
      t.deepEqual(logits.shape, [rows, seq + (row.virtual ?? 0), vocab])
      await trainSteps(peft, 1, 1e-2) // moves zero-initialised factors off zero
      const { loss } = await peft.forward(batch())
      await loss!.backward()
      const params = peft.namedParameters({ trainableOnly: true })
      t.true(params.length > 0)
      for (const [name, p] of params) {
        const g = await p.grad!.toFloat64Array()
        t.true(g.every(Number.isFinite), `${name}: finite gradient`)
        t.true(g.some((x) => x !== 0), `${name}: non-zero gradient (a silent cut?)`)
      }
      // Central differences on the largest-gradient element of the first parameter.
      const picked = params.find(([n]) => row.fdParam?.test(n) ?? true)
      if (!picked) return t.fail(`no trainable parameter matches ${row.fdParam} among ${params.map(([n]) => n).join(', ')}`)
      const [name, p] = picked
      const g = await p.grad!.toFloat64Array()
      const i = g.reduce((best, x, k) => (Math.abs(x) > Math.abs(g[best]) ? k : best), 0)
      const w = await p.data.toFloat64Array()
      const at = async (delta: number) => {
        const v = Float64Array.from(w)
        v[i] += delta
        p.setData(v)
        return (await peft.forward(batch())).loss!.item()
      }
      const h = 1e-6
      const fd = ((await at(h)) - (await at(-h))) / (2 * h)
      p.setData(w)
      t.log(`${name}[${i}]: analytic ${g[i].toExponential(6)}, finite difference ${fd.toExponential(6)}`)
      t.true(Math.abs(fd - g[i]) <= 1e-5 * Math.max(1, Math.abs(g[i])), `finite difference ${fd} vs ${g[i]}`)
      peft.dispose()
    })

    test(`${title}: save/load, merge, disable, and 20 AdamW steps lower the loss`, async (t) => {
      const peft = await attach(row)
      const losses = await trainSteps(peft, 20, 1e-2)
      t.true(losses[19] < losses[0], `loss ${losses[0]} -> ${losses[19]}`)
      const trained = await logitsOf(peft)
      const dir = tempDir(t, 'peft-node-contract-')
      await peft.savePretrained(dir)
      const back = await PeftModel.fromPretrained(await load(), dir)
      t.deepEqual(await logitsOf(back), trained, 'save/load round trip')
      back.dispose()
      const base = await peft.withAdaptersDisabled(() => logitsOf(peft))
      t.deepEqual(base, await logitsOf(await load()), 'disabled = base')
      t.true(maxDiff(realPositions(trained, row.virtual ?? 0, peft.config.vocab_size), base) > 1e-4, 'the trained adapter changes the logits of the real tokens')
      if (row.canMerge) {
        peft.mergeAdapter()
        t.true(maxDiff(await logitsOf(peft), trained) < 1e-4, 'merged = unmerged')
        peft.unmergeAdapter()
        t.true(maxDiff(await logitsOf(peft), trained) < 1e-4, 'unmerge restores')
      } else {
        t.throws(() => peft.mergeAdapter(), { message: /cannot be merged/ })
      }
      peft.dispose()
    })
  }
}

// Every method over a frozen base kept quantized: the tiny LLaMA written as a Q4_0 GGUF (rows of
// 64 and 160 values: whole 32-value blocks), loaded as stored and loaded dequantized to float32.
// The quantized linears compute with the dequantized values, so logits, loss and every adapter
// gradient agree to float32 rounding (sparse masks train a delta beside the frozen weight, so
// they too). Training a quantized base weight itself is refused (errors.spec).
const llama = ARCHS[0]
let quantizedPath = ''
test.before(async () => {
  quantizedPath = join(tempDir(undefined, 'peft-node-q4-'), 'tiny.q4_0.gguf') // removed at exit
  const base = await AutoModelForCausalLM.fromPretrained(llama.fx.modelDir, { dtype: 'float32' })
  await base.saveGguf(quantizedPath, { outtype: 'q4_0' })
  base.dispose()
})
const maxDiffOf = (a: Float64Array, b: Float64Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)
const closeTo = (a: Float64Array, b: Float64Array) => maxDiffOf(a, b) <= 1e-5 * Math.max(b.reduce((m, x) => Math.max(m, Math.abs(x)), 0), 1e-6)
for (const row of ROWS) {
  test(`${row.name}: over a quantized base (Q4_0) as over its dequantized copy`, async (t) => {
    const kept = await AutoModelForCausalLM.fromPretrained(quantizedPath)
    t.true(kept.namedParameters().some(([n, p]) => n.endsWith('q_proj.weight') && p.storage === 'Q4_0'), 'linears stay Q4_0')
    const inp = llama.fx.inputs()
    const batch = { inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }
    const runs = []
    for (const model of [kept, await AutoModelForCausalLM.fromPretrained(quantizedPath, { dtype: 'float32' })]) {
      const peft = await getPeftModel(model, row.config(llama), { seed: 1 })
      const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-2, weightDecay: 0 })
      const first = await peft.forward(batch)
      await first.loss!.backward()
      await opt.step() // off the zero init
      opt.zeroGrad()
      const { loss, logits } = await peft.forward(batch)
      await loss!.backward()
      const grads = await Promise.all(peft.namedParameters({ trainableOnly: true }).map(async ([n, p]) => [n, await p.grad!.toFloat64Array()] as const))
      runs.push({ loss: await loss!.item(), logits: await logits.toFloat64Array(), grads })
      peft.dispose()
    }
    const [q, d] = runs
    t.true(Math.abs(q.loss - d.loss) <= 1e-5 * Math.abs(d.loss), `loss ${q.loss} vs ${d.loss}`)
    t.true(closeTo(q.logits, d.logits), `logits differ by ${maxDiffOf(q.logits, d.logits)}`)
    t.deepEqual(q.grads.map(([n]) => n), d.grads.map(([n]) => n))
    t.true(q.grads.length > 0)
    for (const [[name, gq], [, gd]] of q.grads.map((g, i) => [g, d.grads[i]] as const)) {
      t.true(gq.some((x) => x !== 0) && gq.every(Number.isFinite), `${name}: finite, non-zero gradient`)
      t.true(closeTo(gq, gd), `${name}: gradients differ by ${maxDiffOf(gq, gd)}`)
    }
  })
}

test('a base weight kept quantized cannot train: the error names it and the way out', async (t) => {
  const kept = await AutoModelForCausalLM.fromPretrained(quantizedPath)
  const [name, p] = kept.namedParameters().find(([n]) => n.endsWith('down_proj.weight'))!
  t.is(p.storage, 'Q4_0')
  t.throws(() => (p.requiresGrad = true), { message: new RegExp(`${name}.*Q4_0.*dtype 'float32'`) })
  t.false(p.requiresGrad)
  kept.dispose()
})

// Laplace-LoRA (issue 16): the posterior fitted on a LoRA adapter, saved next to it and loaded
// onto a fresh model with the adapter, predicts the same (GLM over a target set and MC).
test('Laplace-LoRA: fit + predict round trip through the adapter folder', async (t) => {
  const fx = new Fixture(FIXTURES)
  const inp = fx.inputs()
  const peft = await getPeftModel(await AutoModelForCausalLM.fromPretrained(fx.modelDir), new peftNode.LoraConfig({ r: 4, targetModules: ['q_proj', 'v_proj'], initLoraWeights: false }), { seed: 1 })
  const post = await peft.fitLaplace([{ inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }])
  const opts = { attentionMask: inp.attention_mask, targetTokens: [3, 4, 5] }
  const [glm, mc] = [await peft.laplacePredict(inp.input_ids, opts), await peft.laplacePredict(inp.input_ids, { attentionMask: inp.attention_mask, samples: 2 })]
  const dir = tempDir(t, 'laplace-contract-')
  await peft.savePretrained(dir)
  await post.save(dir)
  peft.dispose()
  const back = await PeftModel.fromPretrained(await AutoModelForCausalLM.fromPretrained(fx.modelDir), dir)
  t.is(back.loadLaplace(dir).priorPrecision, post.priorPrecision)
  t.deepEqual(await back.laplacePredict(inp.input_ids, opts), glm)
  t.deepEqual(await back.laplacePredict(inp.input_ids, { attentionMask: inp.attention_mask, samples: 2 }), mc)
  back.dispose()
})
