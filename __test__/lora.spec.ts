// LoRA, rsLoRA and DoRA from TypeScript against PEFT's fixture cases: PEFT's files in,
// logits, gradients, two AdamW steps, greedy generation and merged weights out.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AdamW, LlamaModel, PeftModel } from '../src'
import { FIXTURES, MODEL_DIR, expected, inputs, maxMaskedDiff, relErr } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const CASES = ['lora_qv', 'lora_all_rslora', 'dora'] as const

function caseDir(name: string): string {
  return join(FIXTURES, 'cases', name)
}

function fixtureName(peftName: string): string {
  return peftName.replace('.default.', '.')
}

for (const name of CASES) {
  test(`${name}: logits, loss, gradients, AdamW steps, greedy and merge match PEFT`, async (t) => {
    const exp = expected(name)
    const inp = inputs()
    const hp = JSON.parse(readFileSync(join(caseDir(name), 'case.json'), 'utf8'))
    const peft = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), caseDir(name), { isTrainable: true })
    const batch = { inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }
    const { logits, loss } = await peft.forward(batch)
    const dl = maxMaskedDiff(await logits.toFloat32Array(), exp.get('logits')!.data, inp.attention_mask, 384)
    t.true(dl < 1e-4, `logits ${dl}`)
    t.true(Math.abs((await loss!.item()) - exp.get('loss')!.data[0]) < 1e-4)
    await loss!.backward()

    const trainable = peft.namedParameters({ trainableOnly: true })
    const fixtureGrads = [...exp.keys()].filter((k) => k.startsWith('grad.'))
    t.is(trainable.length, fixtureGrads.length)
    let worstGrad = 0
    const grad0 = new Map<string, Float32Array>()
    for (const [n, p] of trainable) {
      const g = await p.grad!.toFloat32Array()
      grad0.set(n, g)
      worstGrad = Math.max(worstGrad, relErr(g, exp.get(`grad.${fixtureName(n)}`)!.data))
    }
    t.true(worstGrad < 1e-3, `gradients ${worstGrad}`)

    const opt = new AdamW(trainable, { lr: hp.adamw.lr, betas: hp.adamw.betas, eps: hp.adamw.eps, weightDecay: hp.adamw.weight_decay })
    await opt.step()
    opt.zeroGrad()
    const out1 = await peft.forward(batch)
    const loss1 = await out1.loss!.item()
    t.true(Math.abs(loss1 - exp.get('loss_after_step1')!.data[0]) < 1e-4, `loss after step 1 ${loss1}`)
    await out1.loss!.backward()
    await opt.step()
    // Elements whose gradient is ~0 move by ~lr in a direction set by rounding (Adam
    // normalises each element), so they get 1e-3 (0.1 lr); all others 1e-4.
    let worst = 0
    let worstTiny = 0
    for (const [n, p] of trainable) {
      const got = await p.data.toFloat32Array()
      const want = exp.get(`after_step2.${fixtureName(n)}`)!.data
      const g = grad0.get(n)!
      const gmax = g.reduce((m, x) => Math.max(m, Math.abs(x)), 0)
      got.forEach((x, i) => {
        const d = Math.abs(x - want[i])
        if (Math.abs(g[i]) < 0.01 * gmax) worstTiny = Math.max(worstTiny, d)
        else worst = Math.max(worst, d)
      })
    }
    t.log(`logits ${dl.toExponential(1)}, grads ${worstGrad.toExponential(1)}, after_step2 ${worst.toExponential(1)} (near-zero-grad elements ${worstTiny.toExponential(1)})`)
    t.true(worst < 1e-4, `after_step2 ${worst}`)
    t.true(worstTiny < 1e-3, `after_step2 near-zero-grad ${worstTiny}`)

    const prompt = inp.input_ids[0].slice(0, inp.prompt_len)
    t.deepEqual(await peft.generate(prompt, { maxNewTokens: inp.new_tokens, stopTokenIds: [] }), Array.from(exp.get('greedy_after_step2')!.data))

    const merged = await peft.mergeAndUnload()
    const params = new Map(merged.namedParameters())
    for (const key of [...exp.keys()].filter((k) => k.startsWith('merged_after_step2.'))) {
      const w = await params.get(key.slice('merged_after_step2.'.length))!.data.toFloat32Array()
      t.true(relErr(w, exp.get(key)!.data) < 1e-4, key)
    }
    t.throws(() => peft.adapterNames, { message: /unloaded/ })
    merged.dispose()
  })
}

test('a PEFT-written adapter loaded and saved by us gives the same files; save then load gives the same logits', async (t) => {
  for (const name of CASES) {
    const dir = tempDir(t, `peft-node-${name}-`)
    const peft = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), caseDir(name))
    await peft.savePretrained(dir)
    t.deepEqual(readFileSync(join(dir, 'adapter_model.safetensors')), readFileSync(join(caseDir(name), 'adapter_model.safetensors')), name)
    t.deepEqual(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')), JSON.parse(readFileSync(join(caseDir(name), 'adapter_config.json'), 'utf8')))
    const ids = inputs().input_ids
    const a = await (await peft.forward({ inputIds: ids })).logits.toFloat32Array()
    const again = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), dir)
    const b = await (await again.forward({ inputIds: ids })).logits.toFloat32Array()
    t.deepEqual(a, b)
    peft.dispose()
    again.dispose()
  }
})
