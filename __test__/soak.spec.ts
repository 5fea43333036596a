// Soak: load -> attach adapter -> forward -> backward -> step -> save -> load -> dispose, again
// and again in one process; resident memory must stop growing after a warm-up. A few cycles
// run with the suite; `SOAK_CYCLES=1000 npx ava __test__/soak.spec.ts` is the by-hand run
// (it logs the RSS curve). Also: work racing on one model from Promise.all settles, one by one
// or with a clear error, never a crash.
import test from 'ava'
import { AdamW, LlamaModel, LoraConfig, PeftModel, getPeftModel } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const CYCLES = Number(process.env.SOAK_CYCLES ?? 40)
const WARMUP = Math.min(20, Math.floor(CYCLES / 2))
if (!(CYCLES >= 8)) throw new Error(`SOAK_CYCLES: expected a number >= 8, found ${process.env.SOAK_CYCLES}`)

async function cycle(dir: string): Promise<void> {
  const inp = inputs()
  const batch = { inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LoraConfig({ r: 4, targetModules: ['q_proj', 'v_proj'] }), { warn: false })
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-3 })
  const { loss } = await peft.forward(batch)
  await loss!.backward()
  await opt.step()
  await peft.savePretrained(dir)
  peft.dispose()
  const again = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), dir)
  await (await again.forward({ inputIds: inp.input_ids })).logits.toFloat32Array()
  again.dispose()
}

test('soak: RSS stops growing after warm-up (< 5% over the cycles after it)', async (t) => {
  const dir = tempDir(t)
  const rss: number[] = []
  for (let i = 0; i < CYCLES; i++) {
    await cycle(dir)
    rss.push(process.memoryUsage().rss)
    if (process.env.SOAK_CYCLES && (i + 1) % 50 === 0) t.log(`cycle ${i + 1}: RSS ${(rss[i] / 2 ** 20).toFixed(1)} MiB`)
  }
  const mib = (x: number) => (x / 2 ** 20).toFixed(1)
  // Medians of 10 cycles: single samples swing +-5% with the allocator's purges.
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]
  const window = Math.min(10, Math.floor((CYCLES - WARMUP) / 2))
  const warm = median(rss.slice(WARMUP, WARMUP + window))
  const end = median(rss.slice(-window))
  t.log(`RSS (median of ${window} cycles) after ${WARMUP} warm-up cycles ${mib(warm)} MiB, at ${CYCLES} ${mib(end)} MiB (+${(((end - warm) / warm) * 100).toFixed(2)}%)`)
  t.true(end < warm * 1.05, `RSS grew from ${mib(warm)} to ${mib(end)} MiB`)
})

test('forward, backward, generate, save and dispose racing on one model settle: results or clear errors, no crash', async (t) => {
  const inp = inputs()
  const dir = tempDir(t)
  const batch = { inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LoraConfig({ r: 4, targetModules: ['q_proj', 'v_proj'] }), { warn: false })
  const first = await peft.forward(batch)
  const want = await first.logits.toFloat32Array()
  const results = await Promise.allSettled([
    peft.forward(batch).then((o) => o.logits.toFloat32Array()),
    first.loss!.backward(),
    peft.generate(inp.input_ids[0].slice(0, 4), { maxNewTokens: 8, stopTokenIds: [] }),
    peft.savePretrained(dir),
    peft.forward(batch).then((o) => o.logits.toFloat32Array()),
    Promise.resolve().then(() => peft.dispose()),
    peft.forward(batch).then((o) => o.logits.toFloat32Array()),
  ])
  for (const [i, r] of results.entries()) {
    if (r.status === 'rejected') {
      t.true(r.reason instanceof Error, `call ${i}: rejected with ${String(r.reason)}`)
      t.regex((r.reason as Error).message, /disposed|closed/, `call ${i}: ${(r.reason as Error).message}`)
    } else if (r.value instanceof Float32Array) {
      t.deepEqual(r.value, want, `call ${i}: a forward that ran gives the sequential result`)
    }
  }
  // Jobs queued before dispose may run after it (the pool picks them up later): those are
  // refused like any call after dispose. Whatever ran, ran whole.
  await t.throwsAsync(peft.forward(batch), { message: /disposed/ })
})
