// Soak: load -> attach adapter -> forward -> backward -> step -> save -> load -> dispose, again
// and again in one process; resident memory must stop growing after a warm-up. A few cycles
// run with the suite; `SOAK_CYCLES=1000 npx ava __test__/soak.spec.ts` is the by-hand run
// (it logs the RSS curve). Also: work racing on one model from Promise.all settles, one by one
// or with a clear error, never a crash. It measures leaks, not the allocator's cache of freed
// pages, so it runs with mimalloc's default purge delay (helpers/lean-alloc.ts).
import './helpers/lean-alloc'
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

test('soak: RSS stops growing after warm-up (< 5% between the first and the last window of cycles)', async (t) => {
  const dir = tempDir(t)
  const rss: number[] = []
  for (let i = 0; i < CYCLES; i++) {
    await cycle(dir)
    rss.push(process.memoryUsage().rss)
    if (process.env.SOAK_CYCLES && (i + 1) % 50 === 0) t.log(`cycle ${i + 1}: RSS ${(rss[i] / 2 ** 20).toFixed(1)} MiB`)
  }
  const mib = (x: number) => (x / 2 ** 20).toFixed(1)
  // RSS saws up and down by ~10% as the allocator returns memory every ~20 cycles, with rare
  // spikes: the 90th percentile of the first window (warm-up included) against that of the
  // last one. A leak lifts the whole saw, so it lifts the percentile.
  const w = Math.max(WARMUP, Math.floor(CYCLES / 10))
  const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(0.9 * (xs.length - 1))]
  const warm = p90(rss.slice(0, w))
  const end = p90(rss.slice(-w))
  t.log(`RSS p90 over cycles 1-${w} ${mib(warm)} MiB, over the last ${w} of ${CYCLES} ${mib(end)} MiB (+${(((end - warm) / warm) * 100).toFixed(2)}%)`)
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
