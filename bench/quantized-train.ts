// Training over a quantized base: LoRA r=16 on all seven linears, AdamW, gradient
// checkpointing, the chunked loss; the README's loop (no dispose). One process per run, so its
// peak RSS (getrusage's maxRSS) is its own. Models: random-weight GGUFs of published shapes
// written by our writer (crates/peft-core/examples/bench_gguf.rs).
// Usage: npx tsx bench/quantized-train.ts <model.gguf> <batch> <seq> <steps> [float32] [nockpt]
import { AdamW, AutoModelForCausalLM, LoraConfig, getPeftModel } from '../src'

async function main(): Promise<void> {
  const [path, b, t, n] = process.argv.slice(2)
  const [batch, seq, steps] = [Number(b), Number(t), Number(n)]
  const dtype = process.argv.includes('float32') ? ('float32' as const) : undefined
  const t0 = Date.now()
  const base = await AutoModelForCausalLM.fromPretrained(path, dtype ? { dtype } : {})
  const loadMs = Date.now() - t0
  const afterLoad = process.resourceUsage().maxRSS * 1024
  const peft = await getPeftModel(base, new LoraConfig({ r: 16, loraAlpha: 32, targetModules: 'all-linear' }))
  peft.train()
  if (!process.argv.includes('nockpt')) peft.gradientCheckpointingEnable()
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-4 })
  const vocab = base.config.vocab_size
  const ids = Array.from({ length: batch }, (_, r) => Array.from({ length: seq }, (_, i) => (r * 7919 + i * 104729) % vocab))
  const times: number[] = []
  const cpuTimes: number[] = [] // this process's user + system CPU ms, all threads
  let loss = 0
  for (let step = 0; step < steps; step++) {
    const s = Date.now()
    const c = process.cpuUsage()
    const out = await peft.forward({ inputIds: ids, labels: ids, returnLogits: false })
    loss = await out.loss!.item()
    await out.loss!.backward()
    await opt.step()
    opt.zeroGrad()
    times.push(Date.now() - s)
    const dc = process.cpuUsage(c)
    cpuTimes.push(Math.round((dc.user + dc.system) / 1000))
    process.stderr.write(`step ${step + 1}/${steps}: ${times[step]} ms, loss ${loss.toFixed(4)}\n`)
  }
  const best = Math.min(...times)
  const steal = require('node:fs').readFileSync('/proc/stat', 'utf8').split('\n')[0]
  console.log(JSON.stringify({
    path, dtype: dtype ?? 'kept', checkpointing: !process.argv.includes('nockpt'), batch, seq, loadMs,
    afterLoadMiB: Math.round(afterLoad / 2 ** 20), peakMiB: Math.round((process.resourceUsage().maxRSS * 1024) / 2 ** 20),
    msPerStep: times, cpuMsPerStep: cpuTimes, tokensPerS: ((batch * seq) / (best / 1000)).toFixed(1),
    tokensPerCpuS: ((batch * seq) / (Math.min(...cpuTimes) / 1000)).toFixed(2), loss, cpuLine: steal, loadavg: require('node:os').loadavg(),
  }))
}
main().catch((e: Error) => {
  process.stderr.write(String(e.stack) + '\n')
  process.exit(1)
})
