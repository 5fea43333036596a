// One PEFT fixture case (or the base / full fine-tuning case) checked through the public TS
// API, for any fixture folder of ../shared/fixtures: PEFT's files in, logits, loss, every
// gradient, two AdamW steps, greedy generation, merged weights and byte-identical files out.
import type { ExecutionContext } from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AdamW, AutoModelForCausalLM, PeftModel, type LlamaModel, type Parameter } from '../../src'
import { tempDir } from './temp'
import { maxMaskedDiff, readSafetensors, relErr, type FixtureTensor, type Inputs } from './fixtures'

export class Fixture {
  /**
   * `greedyUpTo`: generated ids are compared up to this length only. transformers 5.17's Phi-3
   * `prepare_inputs_for_generation` drops the KV cache when a LongRoPE sequence passes
   * original_max_position_embeddings, and generation then sees only the newest token; we
   * recompute the cache over the whole sequence with the long factors, as its comment intends.
   */
  constructor(readonly root: string, readonly greedyUpTo = Infinity) {}
  get modelDir(): string {
    return join(this.root, 'model')
  }
  inputs(): Inputs {
    return JSON.parse(readFileSync(join(this.root, 'inputs.json'), 'utf8')) as Inputs
  }
  caseDir(name: string): string {
    return join(this.root, 'cases', name)
  }
  expected(name: string): Map<string, FixtureTensor> {
    return readSafetensors(name === 'base' ? join(this.root, 'base', 'expected.safetensors') : join(this.caseDir(name), 'expected.safetensors'))
  }
  adamw(name: string): { lr: number; betas: [number, number]; eps: number; weight_decay: number } {
    return JSON.parse(readFileSync(join(this.caseDir(name), 'case.json'), 'utf8')).adamw
  }
  load(): Promise<LlamaModel> {
    return AutoModelForCausalLM.fromPretrained(this.modelDir)
  }
}

/** PEFT's state-dict name of a parameter: the adapter name dropped. */
const fixtureName = (n: string) => n.replace(/\.default(\.|$)/, '$1')

function batchOf(inp: Inputs) {
  return { inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }
}

/** Logits and loss of `m` on the fixture inputs against `exp`; returns the loss tensor. */
async function checkForward(t: ExecutionContext, m: LlamaModel | PeftModel, inp: Inputs, exp: Map<string, FixtureTensor>, what: string) {
  const { logits, loss } = await m.forward(batchOf(inp))
  const want = exp.get('logits')!
  const dl = maxMaskedDiff(await logits.toFloat32Array(), want.data, inp.attention_mask, want.shape[2])
  const l = await loss!.item()
  t.true(dl < 1e-4, `${what}: logits differ by ${dl}`)
  t.true(Math.abs(l - exp.get('loss')!.data[0]) < 1e-4 * Math.max(1, Math.abs(l)), `${what}: loss ${l}`)
  return { loss: loss!, dl }
}

/**
 * Two AdamW steps and the parameters after them. Elements whose gradient is ~0 move by
 * ~lr in a direction set by rounding (Adam normalises each element): elements below 1% of
 * their tensor's largest gradient get 0.1 lr, and a tensor whose gradient is zero in exact
 * arithmetic (Qwen2's k_proj bias: softmax ignores a shift common to a query's scores) only
 * has to stay within 2 lr of where it started.
 */
async function checkTwoSteps(t: ExecutionContext, m: LlamaModel | PeftModel, params: [string, Parameter][], inp: Inputs, exp: Map<string, FixtureTensor>, hp: ReturnType<Fixture['adamw']>, what: string) {
  const grad0 = new Map<string, Float32Array>()
  const start = new Map<string, Float32Array>()
  for (const [n, p] of params) {
    grad0.set(n, await p.grad!.toFloat32Array())
    start.set(n, await p.data.toFloat32Array())
  }
  const gmaxAll = Math.max(...[...exp.entries()].filter(([k]) => k.startsWith('grad.')).map(([, v]) => v.data.reduce((a, x) => Math.max(a, Math.abs(x)), 0)))
  const opt = new AdamW(params.map(([, p]) => p), { lr: hp.lr, betas: hp.betas, eps: hp.eps, weightDecay: hp.weight_decay })
  await opt.step()
  opt.zeroGrad()
  const out1 = await m.forward(batchOf(inp))
  const loss1 = await out1.loss!.item()
  t.true(Math.abs(loss1 - exp.get('loss_after_step1')!.data[0]) < 1e-4 * Math.max(1, Math.abs(loss1)), `${what}: loss after step 1 ${loss1}`)
  await out1.loss!.backward()
  await opt.step()
  let [worst, worstTiny] = [0, 0]
  for (const [n, p] of params) {
    const got = await p.data.toFloat32Array()
    const key = fixtureName(n)
    const want = exp.get(`after_step2.${key}`)!.data
    const g = exp.get(`grad.${key}`)!.data
    const gmax = g.reduce((a, x) => Math.max(a, Math.abs(x)), 0)
    const s0 = start.get(n)!
    got.forEach((x, i) => {
      if (gmax < 1e-7 * gmaxAll) {
        t.true(Math.abs(x - s0[i]) <= 2.01 * hp.lr + 1e-6, `${what}: ${n} (zero gradient) moved by ${Math.abs(x - s0[i])}`)
        return
      }
      const d = Math.abs(x - want[i])
      if (Math.abs(g[i]) < 0.01 * gmax) worstTiny = Math.max(worstTiny, d)
      else worst = Math.max(worst, d)
    })
  }
  t.true(worst < 1e-4, `${what}: after_step2 ${worst}`)
  t.true(worstTiny < 0.1 * hp.lr + 1e-4, `${what}: after_step2 near-zero-grad ${worstTiny}`)
  return { worst, worstTiny }
}

async function checkGradients(t: ExecutionContext, params: [string, Parameter][], exp: Map<string, FixtureTensor>, what: string) {
  t.is(params.length, [...exp.keys()].filter((k) => k.startsWith('grad.')).length, `${what}: trainable parameters vs fixture gradients`)
  let worst = 0
  for (const [n, p] of params) {
    t.truthy(p.grad, `${what}: gradient for ${n}`)
    const want = exp.get(`grad.${fixtureName(n)}`)
    t.truthy(want, `${what}: fixture gradient for ${n}`)
    worst = Math.max(worst, relErr(await p.grad!.toFloat32Array(), want!.data))
  }
  t.true(worst < 1e-3, `${what}: gradients off by ${worst}`)
  return worst
}

/** `upTo`: compare only the first ids (see `Fixture.greedyUpTo`). */
async function checkGreedy(t: ExecutionContext, m: LlamaModel | PeftModel, inp: Inputs, want: FixtureTensor, what: string, upTo = Infinity) {
  const prompt = inp.input_ids[0].slice(0, inp.prompt_len)
  const got = await m.generate(prompt, { maxNewTokens: inp.new_tokens, stopTokenIds: [] })
  t.deepEqual(got.slice(0, upTo), Array.from(want.data).slice(0, upTo), `${what}: greedy`)
}

/** The base model: logits, loss and greedy generation. */
export async function checkBase(t: ExecutionContext, fx: Fixture): Promise<void> {
  const model = await fx.load()
  const inp = fx.inputs()
  const exp = fx.expected('base')
  const { dl } = await checkForward(t, model, inp, exp, 'base')
  await checkGreedy(t, model, inp, exp.get('greedy')!, 'base', fx.greedyUpTo)
  t.log(`base: logits ${dl.toExponential(1)}`)
  model.dispose()
}

/** Full fine-tuning: every base parameter trained. */
export async function checkFull(t: ExecutionContext, fx: Fixture): Promise<void> {
  const model = await fx.load()
  const inp = fx.inputs()
  const exp = fx.expected('full')
  const params = model.namedParameters()
  for (const [, p] of params) p.requiresGrad = true
  const { loss } = await checkForward(t, model, inp, exp, 'full')
  await loss.backward()
  const g = await checkGradients(t, params, exp, 'full')
  const s = await checkTwoSteps(t, model, params, inp, exp, fx.adamw('full'), 'full')
  await checkGreedy(t, model, inp, exp.get('greedy_after_step2')!, 'full', fx.greedyUpTo)
  t.log(`full: grads ${g.toExponential(1)}, after_step2 ${s.worst.toExponential(1)} (near-zero ${s.worstTiny.toExponential(1)})`)
  model.dispose()
}

/** An adapter case: PEFT's files loaded, trained two steps, generated from, merged; files saved back identical. */
export async function checkAdapterCase(t: ExecutionContext, fx: Fixture, name: string): Promise<void> {
  const dir = fx.caseDir(name)
  const inp = fx.inputs()
  const exp = fx.expected(name)
  const files = tempDir(t, `peft-node-${name}-`)
  const loaded = await PeftModel.fromPretrained(await fx.load(), dir)
  await loaded.savePretrained(files)
  t.deepEqual(readFileSync(join(files, 'adapter_model.safetensors')), readFileSync(join(dir, 'adapter_model.safetensors')), `${name}: adapter_model.safetensors`)
  t.deepEqual(JSON.parse(readFileSync(join(files, 'adapter_config.json'), 'utf8')), JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')), `${name}: adapter_config.json`)
  loaded.dispose()

  const peft = await PeftModel.fromPretrained(await fx.load(), dir, { isTrainable: true })
  const { loss, dl } = await checkForward(t, peft, inp, exp, name)
  await loss.backward()
  const params = peft.namedParameters({ trainableOnly: true })
  const g = await checkGradients(t, params, exp, name)
  const s = await checkTwoSteps(t, peft, params, inp, exp, fx.adamw(name), name)
  await checkGreedy(t, peft, inp, exp.get('greedy_after_step2')!, name)
  const merged = await peft.mergeAndUnload()
  const weights = new Map(merged.namedParameters())
  for (const key of [...exp.keys()].filter((k) => k.startsWith('merged_after_step2.'))) {
    const w = weights.get(key.slice('merged_after_step2.'.length))
    t.truthy(w, key)
    t.true(relErr(await w!.data.toFloat32Array(), exp.get(key)!.data) < 1e-4, key)
  }
  t.log(`${name}: logits ${dl.toExponential(1)}, grads ${g.toExponential(1)}, after_step2 ${s.worst.toExponential(1)}`)
  merged.dispose()
}
