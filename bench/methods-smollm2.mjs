#!/usr/bin/env node
// Trains every method the CLI knows, by its `--method` name, for a few steps on the SmolLM2 demo
// (SmolLM2-135M-Instruct, the US-capitals chat set, every 5th state held out) and records the
// first and final training loss and the held-out loss: issue 16's "each trains by its CLI name on
// the SmolLM2 demo with its loss falling". Run by hand, never in CI:
//
//   npm run build && npm run fetch:smollm2
//   node bench/methods-smollm2.mjs [--steps 10] [--batch-size 4] [--learning-rate 3e-3] [--only lora,ia3]
//
// The method list is read from the built CLI (dist/cli/methods.js), so methods added later are
// included. Each method runs in its own `peft-node train` process (a crash is a row, not the
// end). Writes .cache/bench-results/methods-smollm2-<time>.json and .md, and prints the table.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { cpus, loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)
const CLI = join(ROOT, 'dist', 'cli', 'main.js')
const MODEL = join(ROOT, '.cache', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf')

const argv = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : fallback
}
const steps = Number(opt('steps', '10'))
const batchSize = Number(opt('batch-size', '4'))
const learningRate = Number(opt('learning-rate', '3e-3'))
const only = opt('only')?.split(',')

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`)
if (!existsSync(MODEL)) throw new Error(`${MODEL} is missing: run \`npm run fetch:smollm2\` first`)
const { METHODS } = require(join(ROOT, 'dist', 'cli', 'methods.js'))
const { capitalsDataset } = require(join(ROOT, 'dist', 'data', 'capitals.js'))
const names = Object.keys(METHODS).filter((m) => !only || only.includes(m))

/** CPU time stolen by the hypervisor, as a fraction of all CPU time since `prev` (from /proc/stat). */
function cpuTimes() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  return { total: f.reduce((a, b) => a + b, 0), steal: f[7] ?? 0 }
}

const work = mkdtempSync(join(tmpdir(), 'methods-smollm2-'))
const { train, heldOut } = capitalsDataset()
const data = join(work, 'data')
mkdirSync(data)
writeFileSync(join(data, 'train.jsonl'), train.map((e) => JSON.stringify(e)).join('\n') + '\n')
writeFileSync(join(data, 'valid.jsonl'), heldOut.map((e) => JSON.stringify(e)).join('\n') + '\n')

function cli(args) {
  return spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', maxBuffer: 1 << 26, timeout: 30 * 60 * 1000 })
}

const base = cli(['eval', '--model', MODEL, '--data', join(data, 'valid.jsonl'), '--batch-size', String(batchSize)])
const baseHeldOut = Number(/loss (\d+\.\d+)/.exec(base.stdout)?.[1] ?? NaN)
console.log(`base model held-out loss ${baseHeldOut.toFixed(4)}; ${names.length} methods, ${steps} steps each (batch ${batchSize}, lr ${learningRate})`)

const rows = []
const t0 = cpuTimes()
const load0 = loadavg()
for (const method of names) {
  const output = join(work, method)
  const started = Date.now()
  const r = cli(['train', '--model', MODEL, '--data', data, '--method', method, '--steps', String(steps), '--batch-size', String(batchSize),
    '--learning-rate', String(learningRate), '--lr-schedule', 'constant', '--max-seq-length', '128', '--output', output])
  const seconds = (Date.now() - started) / 1000
  const metrics = existsSync(join(output, 'metrics.jsonl')) ? readFileSync(join(output, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)) : []
  const losses = metrics.filter((m) => m.type === 'train').map((m) => m.loss)
  const evals = metrics.filter((m) => m.type === 'eval')
  const params = /trainable params: ([\d,]+)/.exec(r.stdout)?.[1]?.replaceAll(',', '')
  const row = {
    method, peftType: METHODS[method].peftType, ok: r.status === 0, params: params ? Number(params) : null,
    firstLoss: losses[0] ?? null, finalLoss: losses.at(-1) ?? null, heldOut: evals.at(-1)?.loss ?? null, seconds,
    error: r.status === 0 ? null : (r.stderr.trim().split('\n').filter((l) => !l.startsWith('warning:')).at(-1) ?? `exit ${r.status ?? r.signal}`),
  }
  // Each step's loss is on another batch, so the held-out loss against the base model's is the firmer test.
  row.trainFalls = row.ok && row.finalLoss !== null && row.finalLoss < row.firstLoss
  row.heldOutFalls = row.ok && row.heldOut !== null && row.heldOut < baseHeldOut
  rows.push(row)
  const f = (v) => (v === null ? '-' : v.toFixed(4))
  console.log(`${method.padEnd(18)} ${row.ok ? 'ok ' : 'ERR'} first ${f(row.firstLoss)} final ${f(row.finalLoss)} held-out ${f(row.heldOut)} ${seconds.toFixed(0)} s${row.error ? `  ${row.error}` : ''}`)
  rmSync(output, { recursive: true, force: true })
}
const t1 = cpuTimes()
const steal = (t1.steal - t0.steal) / Math.max(1, t1.total - t0.total)
const host = { cpus: cpus().length, model: cpus()[0]?.model, loadavgBefore: load0, loadavgAfter: loadavg(), stealFraction: steal }

const f = (v) => (v === null ? '-' : v.toFixed(4))
const table = [
  `SmolLM2-135M-Instruct (Q4_1 GGUF), US capitals: ${train.length} training / ${heldOut.length} held-out examples; ${steps} steps, batch ${batchSize}, lr ${learningRate} (constant). Base model held-out loss ${f(baseHeldOut)}.`,
  `Each step trains on new examples (${steps} steps of ${batchSize} are about one epoch), so first and final train loss are on different batches; the held-out loss against the base model's is the firmer test.`,
  `Host: ${host.cpus} CPUs, load ${load0.map((x) => x.toFixed(2)).join(' ')} -> ${host.loadavgAfter.map((x) => x.toFixed(2)).join(' ')}, steal ${(100 * steal).toFixed(1)}%.`,
  '',
  '| method | peft_type | trainable params | first train loss | final train loss | held-out loss | train falls | held-out falls | seconds |',
  '|---|---|---:|---:|---:|---:|:---:|:---:|---:|',
  ...rows.map((r) => `| ${r.method} | ${r.peftType} | ${r.params?.toLocaleString('en-US') ?? '-'} | ${f(r.firstLoss)} | ${f(r.finalLoss)} | ${f(r.heldOut)} | ${r.ok ? (r.trainFalls ? 'yes' : '**no**') : `error: ${r.error.replaceAll('|', '/')}`} | ${r.ok ? (r.heldOutFalls ? 'yes' : '**no**') : '-'} | ${r.seconds.toFixed(0)} |`),
].join('\n')
console.log(`\n${table}`)
const dir = join(ROOT, '.cache', 'bench-results')
mkdirSync(dir, { recursive: true })
const stamp = new Date().toISOString().replace(/[:.]/g, '-')
writeFileSync(join(dir, `methods-smollm2-${stamp}.json`), JSON.stringify({ steps, batchSize, learningRate, baseHeldOut, host, rows }, null, 2) + '\n')
writeFileSync(join(dir, `methods-smollm2-${stamp}.md`), table + '\n')
rmSync(work, { recursive: true, force: true })
console.log(`\nwritten: ${join(dir, `methods-smollm2-${stamp}.{json,md}`)}`)
