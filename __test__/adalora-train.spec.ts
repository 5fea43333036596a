// AdaLoRA end to end: the Trainer runs the rank allocation (PEFT's `update_and_allocate`)
// through tinit → total_step − tfinal down to target_r's budget, a training forward's loss
// carries the orthogonal regulariser (PEFT `AdaLoraModel.forward`), and the allocation is
// saved as `rank_pattern` and restored on load.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AdaLoraConfig, LlamaModel, LoraConfig, PeftModel, Trainer, getPeftModel, loadData } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { texts } from './helpers/train-data'
import { tempDir } from './helpers/temp'

const qv = ['q_proj', 'v_proj']
const MODULES = 4 // q_proj and v_proj in each of the fixture's 2 layers
const batch = () => ({ inputIds: inputs().input_ids, attentionMask: inputs().attention_mask, labels: inputs().labels })

/** lora_E's non-zero entries (the ranks not masked), per module path. */
async function keptRanks(peft: PeftModel): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const [name, p] of peft.namedParameters()) {
    const m = /^base_model\.model\.(.+)\.lora_E\.default$/.exec(name)
    if (m) out.set(m[1], (await p.data.toFloat64Array()).filter((x) => x !== 0).length)
  }
  return out
}

const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0)

test('the Trainer allocates ranks from init_r down to target_r over tinit..total_step - tfinal; save/load keeps the pattern', async (t) => {
  const cfg = { initR: 4, targetR: 2, tinit: 2, tfinal: 2, deltaT: 2, totalStep: 10, beta1: 0.85, beta2: 0.85, loraDropout: 0, targetModules: qv }
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new AdaLoraConfig(cfg), { seed: 3 })
  const calls: [number, number | null][] = []
  // The Trainer runs each method's per-step rule through afterStep (AdaLoRA: the allocation).
  const allocate = peft.afterStep.bind(peft)
  peft.afterStep = async (ctx) => {
    const report = await allocate(ctx)
    calls.push([ctx.step, report.adaloraBudget])
    return report
  }
  const data = await loadData(texts(8), peft.tokenizer)
  const out = tempDir(t, 'peft-node-adalora-')
  const end = await new Trainer(peft, { train: data.train, output: out, maxSteps: 10, batchSize: 2, learningRate: 1e-2, saveEvery: 5 }).train()
  t.is(end.step, 10)

  // Budget (paper eq. 12): 16 ranks until tinit, then 8 + 8·(1 − (s − 2)/6)³ applied every
  // deltaT = 2 steps, the final 8 from step total_step − tfinal = 8 on (every step).
  const [init, target] = [4 * MODULES, 2 * MODULES]
  const expected = (s: number) => (s <= 2 ? null : s >= 8 ? target : s % 2 ? null : Math.floor((init - target) * (1 - (s - 2) / 6) ** 3 + target))
  t.deepEqual(calls, Array.from({ length: 10 }, (_, s) => [s, expected(s)] as [number, number | null]))
  t.deepEqual(calls.slice(3, 8).map(([, b]) => b), [null, 10, null, 8, null])

  const kept = await keptRanks(peft)
  t.is(kept.size, MODULES)
  t.is(sum(kept), target, `non-masked ranks ${[...kept.entries()]}`)

  const saved = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'))
  t.like(saved, { peft_type: 'ADALORA', deltaT: 2, tinit: 2, tfinal: 2, total_step: 10 })
  t.false('delta_t' in saved)
  const pattern = saved.rank_pattern as Record<string, boolean[]>
  t.deepEqual(Object.keys(pattern).sort(), [...kept.keys()].map((m) => `${m}.lora_E`).sort())
  for (const [m, n] of kept) {
    t.is(pattern[`${m}.lora_E`].length, 4)
    t.is(pattern[`${m}.lora_E`].filter(Boolean).length, n, `${m}: rank_pattern = non-zero lora_E`)
  }

  peft.eval()
  const trained = await (await peft.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()
  const back = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), out)
  t.deepEqual(back.peftConfig.default.rank_pattern, pattern)
  for (const [name, p] of back.namedParameters()) {
    const m = /^base_model\.model\.(.+)\.lora_E\.default$/.exec(name)
    if (m) t.deepEqual(p.shape, [kept.get(m[1])!, 1], `${name}: resized to the kept ranks`)
  }
  const loaded = await (await back.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()
  const diff = loaded.reduce((mx, x, i) => Math.max(mx, Math.abs(x - trained[i])), 0)
  t.log(`logits after load: max |diff| ${diff.toExponential(2)}`)
  t.true(diff < 1e-5, `logits differ by ${diff}`)
  back.dispose()
  peft.dispose()

  // The step-5 checkpoint holds a partial allocation the allocator's state cannot be rebuilt from.
  const again = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new AdaLoraConfig(cfg), { seed: 3 })
  const resume = new Trainer(again, { train: data.train, maxSteps: 10, batchSize: 2, resumeFromCheckpoint: join(out, 'checkpoints', 'step-00000005') })
  await t.throwsAsync(resume.train(), { message: /resuming AdaLoRA after its rank allocation has begun is not supported/ })
  again.dispose()
})

test('the Trainer warns when AdaLoRA total_step is not its own number of steps', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new AdaLoraConfig({ initR: 2, targetR: 1, totalStep: 10, targetModules: qv }))
  const warnings: string[] = []
  const onWarning = (w: Error) => warnings.push(w.message)
  process.on('warning', onWarning)
  try {
    await new Trainer(peft, { train: (await loadData(texts(4), peft.tokenizer)).train, maxSteps: 3, batchSize: 2 }).train()
    await new Promise((r) => setImmediate(r))
  } finally {
    process.off('warning', onWarning)
  }
  t.true(warnings.some((w) => /AdaLoRA total_step 10 differs from the Trainer's 3 steps: the final rank allocation is at step 10/.test(w)), warnings.join('\n'))
  t.not(peft.peftConfig.default.rank_pattern, null, 'allocations were made during the budget phase')
  peft.dispose()
})

/** PEFT's regulariser, computed here: mean over lora_A (Q) and lora_B (P) of ‖QQᵀ − I‖_F, ‖PᵀP − I‖_F. */
async function orthRegularizer(peft: PeftModel): Promise<number> {
  const norms: number[] = []
  for (const [name, p] of peft.namedParameters()) {
    const kind = /\.(lora_A|lora_B)\.default$/.exec(name)?.[1]
    if (!kind) continue
    const [rows, cols] = p.shape
    const v = await p.data.toFloat64Array()
    const at = (i: number, j: number) => v[i * cols + j]
    // lora_A [r, in]: Q Qᵀ is r×r over the columns; lora_B [out, r]: Pᵀ P is r×r over the rows.
    const r = kind === 'lora_A' ? rows : cols
    let sq = 0
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < r; j++) {
        let c = 0
        if (kind === 'lora_A') for (let k = 0; k < cols; k++) c += at(i, k) * at(j, k)
        else for (let k = 0; k < rows; k++) c += at(k, i) * at(k, j)
        sq += (c - (i === j ? 1 : 0)) ** 2
      }
    }
    norms.push(Math.sqrt(sq))
  }
  if (norms.length !== 2 * MODULES) throw new Error(`expected ${2 * MODULES} lora_A/lora_B parameters, found ${norms.length}`)
  return norms.reduce((a, b) => a + b, 0) / norms.length
}

test('a training forward with labels adds orth_reg_weight × the orthogonal regulariser; eval does not', async (t) => {
  const attach = async (orthRegWeight: number) => {
    const config = new AdaLoraConfig({ initR: 4, targetR: 2, totalStep: 10, orthRegWeight, loraDropout: 0, targetModules: qv, initLoraWeights: false })
    return getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR, { dtype: 'float64' }), config, { seed: 5 })
  }
  const [weighted, plain] = [await attach(0.7), await attach(0)]
  const lossOf = async (peft: PeftModel) => (await peft.forward(batch())).loss!.item()
  weighted.train()
  plain.train()
  const reg = await orthRegularizer(weighted)
  const diff = (await lossOf(weighted)) - (await lossOf(plain))
  t.log(`regulariser ${reg.toFixed(6)}: loss difference ${diff.toFixed(9)}, expected ${(0.7 * reg).toFixed(9)}`)
  t.true(reg > 0.1, 'random init is far from orthogonal')
  t.true(Math.abs(diff - 0.7 * reg) < 1e-9, `${diff} vs ${0.7 * reg}`)

  // The term's gradient reaches lora_A/lora_B: the two gradients differ there, not on lora_E.
  const grads = async (peft: PeftModel) => {
    const { loss } = await peft.forward(batch())
    await loss!.backward()
    const out = new Map<string, Float64Array>()
    for (const [n, p] of peft.namedParameters({ trainableOnly: true })) out.set(n, await p.grad!.toFloat64Array())
    peft.zeroGrad()
    return out
  }
  const [gw, gp] = [await grads(weighted), await grads(plain)]
  for (const [n, g] of gw) {
    const d = g.reduce((m, x, i) => Math.max(m, Math.abs(x - gp.get(n)![i])), 0)
    if (/lora_E/.test(n)) t.true(d < 1e-12, `${n}: the regulariser does not involve lora_E`)
    else t.true(d > 1e-6, `${n}: the regulariser's gradient is missing`)
  }

  // Central difference of the training loss on the lora_A element of largest gradient.
  const [name, p] = weighted.namedParameters({ trainableOnly: true }).find(([n]) => /lora_A/.test(n))!
  const g = gw.get(name)!
  const i = g.reduce((best, x, k) => (Math.abs(x) > Math.abs(g[best]) ? k : best), 0)
  const w = await p.data.toFloat64Array()
  const at = async (delta: number) => {
    const v = Float64Array.from(w)
    v[i] += delta
    p.setData(v)
    return lossOf(weighted)
  }
  const h = 1e-6
  const fd = ((await at(h)) - (await at(-h))) / (2 * h)
  p.setData(w)
  t.log(`${name}[${i}]: analytic ${g[i].toExponential(6)}, finite difference ${fd.toExponential(6)}`)
  t.true(Math.abs(fd - g[i]) <= 1e-6 * Math.max(1, Math.abs(g[i])), `finite difference ${fd} vs ${g[i]}`)

  weighted.eval()
  plain.eval()
  t.is(await lossOf(weighted), await lossOf(plain), 'evaluation loss is the plain cross-entropy')
  weighted.dispose()
  plain.dispose()
})

test('updateAndAllocate: a non-AdaLoRA adapter, missing gradients and a bad step are clear errors; afterStep runs it for AdaLoRA only', async (t) => {
  const lora = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LoraConfig({ r: 2, targetModules: qv }))
  await t.throwsAsync(lora.updateAndAllocate(0), { message: /an AdaLoRA adapter.*`default` \(LORA\)/ })
  t.is((await lora.afterStep({ step: 0, lr: 0 })).adaloraBudget, null, 'LoRA has no per-step rule')
  lora.dispose()
  const ada = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new AdaLoraConfig({ initR: 2, targetR: 1, totalStep: 4, targetModules: qv }))
  await t.throwsAsync(ada.updateAndAllocate(0), { message: /gradient: call update_and_allocate after backward and before zero_grad/ })
  await t.throwsAsync(ada.afterStep({ step: 0, lr: 0 }), { message: /gradient: call update_and_allocate after backward and before zero_grad/ })
  t.throws(() => ada.updateAndAllocate(-1), { message: /globalStep: expected an integer >= 0, found -1/ })
  t.throws(() => ada.afterStep({ step: -1, lr: 0 }), { message: /step: expected an integer >= 0, found -1/ })
  ada.dispose()
  await t.throwsAsync(getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new AdaLoraConfig({ initR: 2, targetR: 1, targetModules: qv })), { message: /total_step/ })
})
