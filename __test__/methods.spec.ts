// One contract over every method (a row each): shapes, gradients reach every trainable
// parameter, finite differences in float64, save/load, merge, disable, and training.
import test from 'ava'
import { join } from 'node:path'
import * as peftNode from '../src'
import { AdamW, LlamaModel, PeftModel, getPeftModel, type PeftConfig } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

interface Row {
  name: string
  config: () => PeftConfig
  canMerge: boolean
  /** Virtual tokens prepended to the logits. */
  virtual?: number
  /** Which parameter the finite-difference check perturbs (default: the first). */
  fdParam?: RegExp
}

const qv = ['q_proj', 'v_proj']
const ROWS: Row[] = [
  { name: 'LoRA', config: () => new peftNode.LoraConfig({ r: 4, targetModules: qv }), canMerge: true },
  { name: 'rsLoRA all-linear', config: () => new peftNode.LoraConfig({ r: 4, useRslora: true, targetModules: 'all-linear' }), canMerge: true },
  // PEFT detaches DoRA's weight norm (paper §4.3), so A and B get that gradient, not the
  // exact derivative; the magnitude vector's gradient is exact and is the one checked.
  { name: 'DoRA', config: () => new peftNode.LoraConfig({ r: 4, useDora: true, targetModules: qv }), canMerge: true, fdParam: /lora_magnitude_vector/ },
  { name: 'IA3', config: () => new peftNode.IA3Config({ targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] }), canMerge: true },
  { name: 'VeRA', config: () => new peftNode.VeraConfig({ r: 4, targetModules: qv }), canMerge: true },
  { name: 'LoHa', config: () => new peftNode.LoHaConfig({ r: 4, alpha: 4, targetModules: qv }), canMerge: true },
  { name: 'LoKr', config: () => new peftNode.LoKrConfig({ r: 4, alpha: 4, targetModules: qv }), canMerge: true },
  { name: 'AdaLoRA', config: () => new peftNode.AdaLoraConfig({ initR: 4, targetR: 2, totalStep: 100, targetModules: qv }), canMerge: true },
  // The hook methods (prompt, norm and sublayer sites). Prompt tuning and p-tuning prepend
  // their virtual tokens to the logits; none of these but LN tuning, bias tuning and SSF on
  // linears folds into base weights.
  { name: 'prompt tuning', config: () => new peftNode.PromptTuningConfig({ numVirtualTokens: 3 }), canMerge: false, virtual: 3 },
  { name: 'prefix tuning', config: () => new peftNode.PrefixTuningConfig({ numVirtualTokens: 3 }), canMerge: false },
  // With the reparameterisation MLP the prefixes are its output: check its first layer.
  { name: 'prefix tuning + projection', config: () => new peftNode.PrefixTuningConfig({ numVirtualTokens: 3, prefixProjection: true, encoderHiddenSize: 16 }), canMerge: false, fdParam: /transform\.0\.weight/ },
  { name: 'p-tuning', config: () => new peftNode.PromptEncoderConfig({ numVirtualTokens: 3, encoderHiddenSize: 16 }), canMerge: false, virtual: 3, fdParam: /mlp_head\.0\.weight/ },
  { name: 'LN tuning', config: () => new peftNode.LNTuningConfig(), canMerge: true },
  { name: 'bottleneck adapter', config: () => new peftNode.BottleneckAdapterConfig({ bottleneckSize: 8 }), canMerge: false, fdParam: /adapter_down\.default\.weight/ },
  { name: 'parallel adapter', config: () => new peftNode.ParallelAdapterConfig({ bottleneckSize: 8 }), canMerge: false, fdParam: /adapter_down\.default\.weight/ },
  { name: 'SSF on linears', config: () => new peftNode.SsfConfig({ targetModules: qv }), canMerge: true, fdParam: /ssf_scale/ },
  // After an RMSNorm (no bias to fold the shift into) SSF cannot merge.
  { name: 'SSF with norms', config: () => new peftNode.SsfConfig(), canMerge: false, fdParam: /layernorm\.ssf_shift/ },
  { name: 'bias tuning', config: () => new peftNode.BiasTuningConfig({ targetModules: qv }), canMerge: true },
  // The contract runs in evaluation mode (no `train()`), where DyLoRA uses evalRank (= r)
  // with no rank detached, so every row of A and column of B is in the graph and the
  // "every trainable parameter gets a gradient" check covers all ranks. Sampled ranks and
  // the frozen mode (training only) are checked in __test__/dylora.spec.ts and dylora.rs.
  { name: 'DyLoRA', config: () => new peftNode.DyLoraConfig({ r: 4, rMin: 1, targetModules: qv }), canMerge: true },
  // Prefixes are attended to, not prepended to the logits: no virtual positions.
  { name: 'MAM adapter', config: () => new peftNode.MamAdapterConfig({ numVirtualTokens: 4, bottleneckSize: 8 }), canMerge: false },
  { name: 'UniPELT', config: () => new peftNode.UniPeltConfig({ numVirtualTokens: 4, r: 4, loraAlpha: 4, bottleneckSize: 8 }), canMerge: false, fdParam: /gate_prefix/ },
  { name: 'SparseMask (magnitude)', config: () => new peftNode.SparseMaskConfig({ density: 0.05, targetModules: qv }), canMerge: true },
]

const batch = () => ({ inputIds: inputs().input_ids, attentionMask: inputs().attention_mask, labels: inputs().labels })

async function attach(row: Row, dtype: 'float32' | 'float64' = 'float32'): Promise<PeftModel> {
  return getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR, { dtype }), row.config(), { seed: 1 })
}

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

const logitsOf = async (m: PeftModel | LlamaModel) => (await m.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()
const maxDiff = (a: Float64Array, b: Float64Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)
/** The logits [2, virtual + 16, 384] without the virtual positions: [2, 16, 384]. */
const realPositions = (logits: Float64Array, virtual: number) => {
  const row = (virtual + 16) * 384
  return Float64Array.from({ length: 2 * 16 * 384 }, (_, i) => logits[Math.floor(i / (16 * 384)) * row + virtual * 384 + (i % (16 * 384))])
}

for (const row of ROWS) {
  test(`${row.name}: shapes, gradients everywhere, finite differences`, async (t) => {
    const peft = await attach(row, 'float64')
    const { logits } = await peft.forward(batch())
    t.deepEqual(logits.shape, [2, 16 + (row.virtual ?? 0), 384])
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

  test(`${row.name}: save/load, merge, disable, and 20 AdamW steps lower the loss`, async (t) => {
    const peft = await attach(row)
    const losses = await trainSteps(peft, 20, 1e-2)
    t.true(losses[19] < losses[0], `loss ${losses[0]} -> ${losses[19]}`)
    const trained = await logitsOf(peft)
    const dir = tempDir(t, 'peft-node-contract-')
    await peft.savePretrained(dir)
    const back = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), dir)
    t.deepEqual(await logitsOf(back), trained, 'save/load round trip')
    back.dispose()
    const base = await peft.withAdaptersDisabled(() => logitsOf(peft))
    t.deepEqual(base, await logitsOf(await LlamaModel.fromPretrained(MODEL_DIR)), 'disabled = base')
    t.true(maxDiff(realPositions(trained, row.virtual ?? 0), base) > 1e-4, 'the trained adapter changes the logits of the real tokens')
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
