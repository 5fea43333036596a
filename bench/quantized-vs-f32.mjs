#!/usr/bin/env node
// Training tokens/s over a quantized base against the same file dequantized to float32 (issue
// 11's "at least 0.9x"): bench/quantized-train.ts on both sides, alternating ABBA, with the
// host's steal time and load per run; best and median per side, in tokens per wall second and
// per CPU second of the process (all threads: on a host shared with other work, the wall time
// moves with their load far more than the CPU time does). `--before addon.node` adds a third
// side, the kept base through another build of the addon (NAPI_RS_NATIVE_LIBRARY_PATH), so a
// change is measured against its baseline in the same window. Run by hand, never in CI.
//
//   node bench/quantized-vs-f32.mjs <model.gguf> [--batch 1] [--seq 256] [--steps 2] [--repeat 3] [--before old.node]
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { resolve } from 'node:path'

const argv = process.argv.slice(2)
const opt = (name, fallback) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : fallback)
const [model] = argv
if (!model) throw new Error('usage: node bench/quantized-vs-f32.mjs <model.gguf> [--batch B] [--seq S] [--steps N] [--repeat K]')
const [batch, seq, steps, repeat] = [opt('batch', '1'), opt('seq', '256'), opt('steps', '2'), Number(opt('repeat', '3'))]

const cpuStat = () => {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  return [f.slice(0, 8).reduce((a, b) => a + b, 0), f[7]]
}
const median = (xs) => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1]

const before = opt('before', undefined)
const sides = before ? ['kept', 'float32', 'before'] : ['kept', 'float32']
const runs = Object.fromEntries(sides.map((s) => [s, []]))
for (let i = 0; i < repeat; i++) {
  for (const side of i % 2 === 0 ? sides : [...sides].reverse()) {
    const [t0, s0] = cpuStat()
    const load = loadavg()[0]
    const args = ['tsx', 'bench/quantized-train.ts', model, batch, seq, steps, ...(side === 'float32' ? ['float32'] : [])]
    const env = side === 'before' ? { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: resolve(before) } : process.env
    const r = spawnSync('npx', args, { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'inherit'] })
    if (r.status !== 0) throw new Error(`${side} run failed (exit ${r.status})`)
    const out = JSON.parse(r.stdout.trim().split('\n').pop())
    const [t1, s1] = cpuStat()
    const row = { tokensPerS: Number(out.tokensPerS), tokensPerCpuS: Number(out.tokensPerCpuS), peakMiB: out.peakMiB, steal: (100 * (s1 - s0)) / (t1 - t0), load: [load, loadavg()[0]] }
    console.error(`${side} run ${i + 1}: ${row.tokensPerS} tok/s, ${row.tokensPerCpuS} tok/CPU-s, peak ${row.peakMiB} MiB, steal ${row.steal.toFixed(1)}%, load ${row.load.map((x) => x.toFixed(1)).join(' → ')}`)
    runs[side].push(row)
  }
}
for (const [side, rs] of Object.entries(runs)) {
  const t = rs.map((r) => r.tokensPerS)
  const c = rs.map((r) => r.tokensPerCpuS)
  console.log(`${side.padEnd(8)} best ${Math.max(...t).toFixed(1)} / median ${median(t).toFixed(1)} tok/s, best ${Math.max(...c).toFixed(2)} / median ${median(c).toFixed(2)} tok/CPU-s, peak ${median(rs.map((r) => r.peakMiB))} MiB, steal ${rs.map((r) => r.steal.toFixed(1)).join(', ')}%`)
}
const best = (x) => Math.max(...x)
for (const side of sides.filter((s) => s !== 'float32')) {
  const ratio = (f, key) => f(runs[side].map((r) => r[key])) / f(runs.float32.map((r) => r[key]))
  console.log(`${side} / float32: best ${ratio(best, 'tokensPerS').toFixed(2)}x, median ${ratio(median, 'tokensPerS').toFixed(2)}x (wall); best ${ratio(best, 'tokensPerCpuS').toFixed(2)}x, median ${ratio(median, 'tokensPerCpuS').toFixed(2)}x (CPU time)`)
}
