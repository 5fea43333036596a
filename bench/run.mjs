#!/usr/bin/env node
// Runs the LoRA training benchmark for peft-node and for PyTorch + PEFT on the same random
// SmolLM2-135M-shaped checkpoint and the same batch, one after the other, and prints both
// side by side with the ratio ours / torch. Run by hand (`npm run bench`), never in CI.
//
//   node bench/run.mjs [--shape smollm2|llama-1b] [--steps 5] [--repeat 3] [--only ours|torch] [--keep-model DIR]
//   node bench/run.mjs --gemm [--repeat 3] [--threads 2]
//
// --gemm compares the matrix products alone: GFLOP/s of the frozen linears' forward (x · Wᵀ)
// and backward (g · W) at both shapes, crates/peft-core/examples/gemm_bench.rs against
// bench/gemm_torch.py, alternated the same way.
//
// The two sides alternate (ABBA) --repeat times; each run records /proc/stat's steal time and
// the load average; best and median are reported per side. Our side is the README's loop.
//
// PyTorch, transformers and PEFT are installed on first use into .cache/bench-venv from
// PyPI (the default Linux torch wheel, which pulls NVIDIA's CUDA wheels: PyPI serves no
// CPU-only build). The addon must be built first (npm run build:native, release).
// Results also go to .cache/bench-results/<time>.json.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const VENV = join(ROOT, '.cache', 'bench-venv')
const PY = join(VENV, 'bin', 'python')
// Pinned so that figures stay comparable between runs.
const PY_PACKAGES = ['torch==2.15.0', 'transformers==5.24.0', 'peft==0.21.2', 'safetensors==0.8.0']

const argv = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : fallback
}
const steps = opt('steps', '5')
// At least three alternations: on a shared host one run of each side means little.
const repeat = Number(opt('repeat', '3'))
const only = opt('only')
const keep = opt('keep-model')
const shapeName = opt('shape', 'smollm2')
const SHAPE = { smollm2: { batch: 4, seq: 256, label: 'SmolLM2-135M shape' }, 'llama-1b': { batch: 1, seq: 512, label: 'Llama-3.2-1B shape' } }[shapeName]
if (!SHAPE) throw new Error(`--shape: expected smollm2 or llama-1b, got ${shapeName}`)

/** The aggregate cpu line of /proc/stat: [total jiffies, steal jiffies]. */
function cpuStat() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    return [f.slice(0, 8).reduce((a, b) => a + b, 0), f[7] ?? 0]
  } catch {
    return [0, 0]
  }
}

/** Runs one side once, recording the host's steal time and load average around it. */
function measured(fn) {
  const [t0, s0] = cpuStat()
  const load = loadavg()[0]
  const r = fn()
  const [t1, s1] = cpuStat()
  return { ...r, steal_pct: t1 > t0 ? (100 * (s1 - s0)) / (t1 - t0) : null, load1_before: load, load1_after: loadavg()[0] }
}

function run(cmd, args, what, extraEnv = {}) {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...extraEnv }, maxBuffer: 1 << 26 })
  if (r.status !== 0) throw new Error(`${what} failed (exit ${r.status ?? r.signal})`)
  return r.stdout
}

function lastJson(out) {
  const line = out.trim().split('\n').filter((l) => l.startsWith('{')).pop()
  return JSON.parse(line)
}

function ensureVenv() {
  const ok = existsSync(PY) && spawnSync(PY, ['-c', 'import torch, transformers, peft, safetensors'], { stdio: 'ignore' }).status === 0
  if (ok) return
  console.error(`installing ${PY_PACKAGES.join(' ')} into ${VENV} (several GB: the torch wheel pulls CUDA libraries)`)
  if (!existsSync(PY)) run('python3', ['-m', 'venv', VENV], 'python3 -m venv')
  run(PY, ['-m', 'pip', 'install', '--disable-pip-version-check', ...PY_PACKAGES], 'pip install')
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Per-shape GFLOP/s of our gemm and PyTorch's, best and median over the alternating runs. */
function gemmMain() {
  ensureVenv()
  const threads = opt('threads', '2')
  const env = { RAYON_NUM_THREADS: threads, OMP_NUM_THREADS: threads }
  const lines = (out) => out.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
  const target = ['--target', 'x86_64-unknown-linux-gnu']
  const sides = {
    ours: () => ({ shapes: lines(run('cargo', ['run', '-q', '--release', ...target, '-p', 'peft-core', '--example', 'gemm_bench', '--', '5'], 'gemm_bench', env)) }),
    torch: () => ({ shapes: lines(run(PY, ['bench/gemm_torch.py', '5'], 'bench/gemm_torch.py', env)) }),
  }
  const results = { ours: [], torch: [] }
  for (let i = 0; i < repeat; i++) {
    for (const side of i % 2 === 0 ? ['ours', 'torch'] : ['torch', 'ours']) {
      const r = measured(sides[side])
      console.error(`${side} run ${i + 1}/${repeat}: steal ${r.steal_pct?.toFixed(1)}%, load ${r.load1_before.toFixed(1)} → ${r.load1_after.toFixed(1)}`)
      results[side].push(r)
    }
  }
  console.log(`GFLOP/s, f32, ${threads} thread(s), best / median of ${repeat} alternating runs (each the best of 5 products)`)
  console.log(`steal ours ${results.ours.map((r) => r.steal_pct?.toFixed(1)).join(', ')}%, torch ${results.torch.map((r) => r.steal_pct?.toFixed(1)).join(', ')}%`)
  console.log('| shape | m × k × n | ours x·Wᵀ | torch x·Wᵀ | ours g·W | torch g·W |')
  console.log('| --- | --- | --- | --- | --- | --- |')
  const cell = (side, j, key) => {
    const xs = results[side].map((r) => r.shapes[j][key])
    return `${Math.max(...xs).toFixed(0)} / ${median(xs).toFixed(0)}`
  }
  results.ours[0].shapes.forEach((s, j) => {
    console.log(`| ${s.shape} | ${s.m} × ${s.k} × ${s.n} | ${cell('ours', j, 'fwd_gflops')} | ${cell('torch', j, 'fwd_gflops')} | ${cell('ours', j, 'bwd_gflops')} | ${cell('torch', j, 'bwd_gflops')} |`)
  })
}

function main() {
  if (argv.includes('--gemm')) return gemmMain()
  if (only !== 'ours') ensureVenv()
  const dir = keep ?? mkdtempSync(join(tmpdir(), 'peft-bench-'))
  const load = { before: loadavg() }
  try {
    console.error(`writing the random checkpoint to ${dir}`)
    run('npx', ['tsx', 'bench/make-model.ts', dir, '0', shapeName], 'make-model')
    const env = { RAYON_NUM_THREADS: '2', OMP_NUM_THREADS: '2' }
    const shapeArgs = ['--batch', String(SHAPE.batch), '--seq', String(SHAPE.seq)]
    const results = { ours: [], torch: [] }
    const sides = {
      ours: () => lastJson(run('npx', ['tsx', 'bench/lora-train.ts', '--model', dir, '--steps', steps, ...shapeArgs, '--json'], 'bench/lora-train.ts', env)),
      torch: () => lastJson(run(PY, ['bench/lora_train_torch.py', dir, '--steps', steps, ...shapeArgs, '--json'], 'bench/lora_train_torch.py', env)),
    }
    for (let i = 0; i < repeat; i++) {
      // ABBA: the side that runs first alternates, so a drift in the host's load hits both.
      const order = i % 2 === 0 ? ['ours', 'torch'] : ['torch', 'ours']
      for (const side of order) {
        if (only && only !== side) continue
        console.error(`${side === 'ours' ? 'peft-node' : 'torch + PEFT'}, run ${i + 1}/${repeat}`)
        const r = measured(sides[side])
        console.error(`  ${r.tokens_per_s.toFixed(1)} tok/s, steal ${r.steal_pct?.toFixed(1)}%, load ${r.load1_before.toFixed(1)} → ${r.load1_after.toFixed(1)}`)
        results[side].push(r)
      }
    }
    load.after = loadavg()
    const summary = (rs) =>
      rs.length === 0
        ? null
        : {
            tokens_per_s: median(rs.map((r) => r.tokens_per_s)),
            best_tokens_per_s: Math.max(...rs.map((r) => r.tokens_per_s)),
            steal_pct: rs.map((r) => r.steal_pct),
            load1: rs.map((r) => [r.load1_before, r.load1_after]),
            step_s: median(rs.map((r) => r.step_s)),
            forward_s: median(rs.map((r) => r.forward_s)),
            backward_s: median(rs.map((r) => r.backward_s)),
            optimizer_s: median(rs.map((r) => r.optimizer_s)),
            cpu_s: median(rs.map((r) => r.cpu_s)),
            peak_rss_mib: median(rs.map((r) => r.peak_rss_bytes)) / 2 ** 20,
          }
    const ours = summary(results.ours)
    const torch = summary(results.torch)
    const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim()
    const machine = `${cpus()[0]?.model ?? '?'}, ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB`
    console.log(`LoRA r=16 (q,k,v,o,gate,up,down), ${SHAPE.label}, random weights, batch ${SHAPE.batch} x seq ${SHAPE.seq}, f32, ${steps} timed steps x ${repeat} alternating run(s); ours = the README loop (no dispose)`)
    console.log(`machine: ${machine}; commit ${commit}; load avg before ${load.before.map((x) => x.toFixed(2)).join(' ')}, after ${load.after.map((x) => x.toFixed(2)).join(' ')}`)
    const row = (name, s) =>
      s && console.log(`${name.padEnd(12)} best ${s.best_tokens_per_s.toFixed(1).padStart(7)} / median ${s.tokens_per_s.toFixed(1).padStart(7)} tok/s  steal ${s.steal_pct.map((x) => (x ?? NaN).toFixed(1)).join(', ')}%  step ${s.step_s.toFixed(2)} s (fwd ${s.forward_s.toFixed(2)}, bwd ${s.backward_s.toFixed(2)}, opt ${s.optimizer_s.toFixed(3)}; CPU ${s.cpu_s.toFixed(2)} s)  peak RSS ${s.peak_rss_mib.toFixed(0)} MiB`)
    row('peft-node', ours)
    row(`torch ${results.torch[0]?.torch ?? ''}`.trim(), torch)
    if (ours && torch) console.log(`ours/torch: best tokens/s ${(ours.best_tokens_per_s / torch.best_tokens_per_s).toFixed(2)}x, median ${(ours.tokens_per_s / torch.tokens_per_s).toFixed(2)}x, CPU s/step ${(ours.cpu_s / torch.cpu_s).toFixed(2)}x, peak RSS ${(ours.peak_rss_mib / torch.peak_rss_mib).toFixed(2)}x`)
    const outDir = join(ROOT, '.cache', 'bench-results')
    mkdirSync(outDir, { recursive: true })
    const file = join(outDir, `${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
    writeFileSync(file, JSON.stringify({ commit, machine, shape: shapeName, load, steps: Number(steps), repeat, ours, torch, results }, null, 2))
    console.error(`wrote ${file}`)
  } finally {
    if (!keep) rmSync(dir, { recursive: true, force: true })
  }
}

main()
