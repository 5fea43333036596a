// LoRA training throughput of peft-node on a SmolLM2-135M-shaped LLaMA with random weights.
// One step = forward with labels, backward, AdamW step, zeroGrad; a warm-up step, then N
// timed steps. Prints tokens/s (median over steps), per-phase medians and peak RSS.
//
//   npx tsx bench/lora-train.ts [--model DIR] [--steps 5] [--warmup 1] [--batch 4] [--seq 256] [--json]
//
// Without --model the checkpoint is written to a temp folder first (bench/make-model.ts).
// Run by hand (npm run bench runs this and the PyTorch reference side by side): not in CI.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir, loadavg } from 'node:os'
import { join } from 'node:path'
import { LlamaModel, getPeftModel, LoraConfig, AdamW } from '../src'
import { writeRandomLlama } from './make-model'

const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1] : fallback
}

/** Peak resident set size in bytes (VmHWM), or maxRSS where /proc is missing. */
export function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))
    if (m) return Number(m[1]) * 1024
  } catch {
    /* not Linux */
  }
  return process.resourceUsage().maxRSS * 1024
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function main() {
  const steps = Number(arg('steps', '5'))
  const warmup = Number(arg('warmup', '1'))
  const batch = Number(arg('batch', '4'))
  const seq = Number(arg('seq', '256'))
  const json = process.argv.includes('--json')
  let dir = arg('model')
  let tmp: string | undefined
  if (!dir) {
    dir = tmp = mkdtempSync(join(tmpdir(), 'peft-bench-'))
    writeRandomLlama(dir, { batch, seq })
  }
  const inputs = (JSON.parse(readFileSync(join(dir, 'inputs.json'), 'utf8')) as number[][]).slice(0, batch).map((r) => r.slice(0, seq))
  if (inputs.length !== batch || inputs.some((r) => r.length !== seq)) throw new Error(`${dir}/inputs.json holds less than [${batch}, ${seq}] ids`)

  const t0 = performance.now()
  const model = await LlamaModel.fromPretrained(dir, { dtype: 'float32' })
  const peft = await getPeftModel(model, new LoraConfig({ r: 16, loraAlpha: 32, loraDropout: 0, targetModules: TARGETS }))
  peft.train()
  const loadS = (performance.now() - t0) / 1000
  const params = peft.parameters({ trainableOnly: true })
  const { trainable, all } = peft.trainableParameterCounts()
  const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0 })

  const times = { forward: [] as number[], backward: [] as number[], optimizer: [] as number[], step: [] as number[], cpu: [] as number[] }
  const losses: number[] = []
  for (let i = 0; i < warmup + steps; i++) {
    const cpu0 = process.cpuUsage()
    // Minor page faults: each one under transparent huge pages is up to 2 MiB the kernel zeroes.
    const faults0 = process.resourceUsage().minorPageFault
    const a = performance.now()
    // The README's loop, as a user writes it: no dispose(); backward() frees the graph.
    const { loss } = await peft.forward({ inputIds: inputs, labels: inputs })
    const b = performance.now()
    await loss!.backward()
    const c = performance.now()
    await opt.step()
    opt.zeroGrad()
    const d = performance.now()
    const cpu = process.cpuUsage(cpu0)
    const faults = process.resourceUsage().minorPageFault - faults0
    losses.push(await loss!.item())
    if (i >= warmup) {
      times.forward.push(b - a)
      times.backward.push(c - b)
      times.optimizer.push(d - c)
      times.step.push(d - a)
      times.cpu.push((cpu.user + cpu.system) / 1000)
    }
    if (!json) console.error(`step ${i}${i < warmup ? ' (warm-up)' : ''}: ${((d - a) / 1000).toFixed(2)} s (CPU user ${(cpu.user / 1e6).toFixed(2)} s, system ${(cpu.system / 1e6).toFixed(2)} s, ${faults} minor faults), loss ${losses[i].toFixed(4)}`)
  }
  const stepMs = median(times.step)
  const result = {
    impl: 'peft-node',
    batch,
    seq,
    steps,
    trainable,
    all,
    load_s: loadS,
    step_s: stepMs / 1000,
    step_s_all: times.step.map((t) => t / 1000),
    forward_s: median(times.forward) / 1000,
    backward_s: median(times.backward) / 1000,
    optimizer_s: median(times.optimizer) / 1000,
    // CPU seconds (all threads) per step: less sensitive than wall time to other load.
    cpu_s: median(times.cpu) / 1000,
    tokens_per_s: (batch * seq) / (stepMs / 1000),
    peak_rss_bytes: peakRss(),
    losses,
    loadavg: loadavg(),
  }
  peft.dispose()
  if (tmp) rmSync(tmp, { recursive: true, force: true })
  if (json) {
    console.log(JSON.stringify(result))
  } else {
    const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`
    console.log(`peft-node LoRA r=16, batch ${batch} x seq ${seq}, ${steps} steps`)
    console.log(`  trainable ${trainable.toLocaleString('en-US')} of ${all.toLocaleString('en-US')}`)
    console.log(`  step ${result.step_s.toFixed(2)} s (forward ${result.forward_s.toFixed(2)}, backward ${result.backward_s.toFixed(2)}, optimizer ${result.optimizer_s.toFixed(3)}), CPU ${result.cpu_s.toFixed(2)} s`)
    console.log(`  ${result.tokens_per_s.toFixed(1)} tokens/s, peak RSS ${mib(result.peak_rss_bytes)}, load avg ${result.loadavg.map((x) => x.toFixed(2)).join(' ')}`)
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
