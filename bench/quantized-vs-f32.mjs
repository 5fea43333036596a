#!/usr/bin/env node
// Training tokens/s over a quantized base against the same file dequantized to float32 (issue
// 11's "at least 0.9x"): bench/quantized-train.ts on both sides, alternating ABBA, with the
// host's steal time and load per run; best and median per side. Run by hand, never in CI.
//
//   node bench/quantized-vs-f32.mjs <model.gguf> [--batch 1] [--seq 256] [--steps 2] [--repeat 3]
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { loadavg } from 'node:os'

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

const runs = { kept: [], float32: [] }
for (let i = 0; i < repeat; i++) {
  for (const side of i % 2 === 0 ? ['kept', 'float32'] : ['float32', 'kept']) {
    const [t0, s0] = cpuStat()
    const load = loadavg()[0]
    const args = ['tsx', 'bench/quantized-train.ts', model, batch, seq, steps, ...(side === 'float32' ? ['float32'] : [])]
    const r = spawnSync('npx', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    if (r.status !== 0) throw new Error(`${side} run failed (exit ${r.status})`)
    const out = JSON.parse(r.stdout.trim().split('\n').pop())
    const [t1, s1] = cpuStat()
    const row = { tokensPerS: Number(out.tokensPerS), peakMiB: out.peakMiB, steal: (100 * (s1 - s0)) / (t1 - t0), load: [load, loadavg()[0]] }
    console.error(`${side} run ${i + 1}: ${row.tokensPerS} tok/s, peak ${row.peakMiB} MiB, steal ${row.steal.toFixed(1)}%, load ${row.load.map((x) => x.toFixed(1)).join(' → ')}`)
    runs[side].push(row)
  }
}
for (const [side, rs] of Object.entries(runs)) {
  const t = rs.map((r) => r.tokensPerS)
  console.log(`${side.padEnd(8)} best ${Math.max(...t).toFixed(1)} / median ${median(t).toFixed(1)} tok/s, peak ${median(rs.map((r) => r.peakMiB))} MiB, steal ${rs.map((r) => r.steal.toFixed(1)).join(', ')}%`)
}
const ratio = (f) => f(runs.kept.map((r) => r.tokensPerS)) / f(runs.float32.map((r) => r.tokensPerS))
console.log(`kept / float32: best ${ratio((x) => Math.max(...x)).toFixed(2)}x, median ${ratio(median).toFixed(2)}x`)
