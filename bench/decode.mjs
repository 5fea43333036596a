#!/usr/bin/env node
// Batch-1 prompt processing and greedy decode: peft-node (base kept quantized, and converted
// to float32) against llama.cpp through node-llama-cpp's prebuilt CPU binary driven by the
// low-level `sequence.evaluate` (its `LlamaCompletion` adds per-token overhead of its own).
// Each run is its own process; the sides alternate, and every run records the host's steal
// time (/proc/stat) and load average, since this host lends its CPUs to other guests.
// Run by hand (`npm run bench:decode`), never in CI. Needs `npm run build` and the models
// (`npm run fetch:smollm2`, `npm run fetch:gemma3`).
//
//   node bench/decode.mjs [--repeat 3] [--prompt 256] [--new 128] [--threads N] [--models smollm2,gemma3]
//        [--sides ours,ours-f32,llamacpp] [--before DIR]
// `--before DIR` adds the sides before and before-f32: a package root (dist/, index.js and
// its .node) of an earlier build, e.g. a worktree of the previous commit, for before/after
// figures taken in the same load conditions.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { availableParallelism, loadavg } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const MODELS = {
  smollm2: join(ROOT, '.cache', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf'),
  gemma3: join(ROOT, '.cache', 'models', 'gemma-3-270m-q4_k_m.gguf'),
}
const argv = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : fallback
}
const promptLen = Number(opt('prompt', '256'))
const newTokens = Number(opt('new', '128'))
const threads = Number(opt('threads', process.env.PEFT_NODE_NUM_THREADS ?? String(availableParallelism())))

// Deterministic prompt ids, away from the special tokens at the start of the vocabulary.
const promptIds = (vocab) => Array.from({ length: promptLen }, (_, i) => 1000 + ((i * 7919) % Math.min(vocab - 1000, 20000)))

/** CPU milliseconds this process has used (all its threads, user + system). */
const cpuMs = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

/** Our side, written as the README tells users to: fromPretrained, generate; no dispose. */
async function runOurs(path, dtype, root = ROOT) {
  const { AutoModelForCausalLM } = await import(pathToFileURL(join(root, 'dist', 'index.js')).href)
  const model = await AutoModelForCausalLM.fromPretrained(path, dtype ? { dtype } : {})
  const ids = promptIds(model.config.vocab_size)
  const greedy = { stopTokenIds: [] }
  await model.generate(ids.slice(0, 8), { ...greedy, maxNewTokens: 4 }) // warm-up
  let [t, c] = [performance.now(), cpuMs()]
  await model.generate(ids, { ...greedy, maxNewTokens: 1 })
  const [prefillMs, prefillCpuMs] = [performance.now() - t, cpuMs() - c]
  ;[t, c] = [performance.now(), cpuMs()]
  const out = await model.generate(ids, { ...greedy, maxNewTokens: newTokens + 1 })
  const [totalMs, totalCpuMs] = [performance.now() - t, cpuMs() - c]
  const tokens = out.slice(promptLen, promptLen + 32)
  return { prefillMs, decodeMs: totalMs - prefillMs, prefillCpuMs, decodeCpuMs: totalCpuMs - prefillCpuMs, tokens }
}

/** llama.cpp: the prompt through `sequence.evaluate` until its first token, then `newTokens` more. */
async function runLlamaCpp(path) {
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp')
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error })
  const model = await llama.loadModel({ modelPath: path })
  const context = await model.createContext({ contextSize: 1024, batchSize: 512, threads })
  const ids = promptIds(49152) // the same ids as ours (both vocabularies are larger than 21000)
  const once = async (n) => {
    const sequence = context.getSequence()
    const [t0, c0] = [performance.now(), cpuMs()]
    let [first, firstCpu] = [0, 0]
    const tokens = []
    for await (const tok of sequence.evaluate(ids, { temperature: 0 })) {
      if (tokens.length === 0) [first, firstCpu] = [performance.now(), cpuMs()]
      tokens.push(tok)
      if (tokens.length >= n + 1) break
    }
    const [end, endCpu] = [performance.now(), cpuMs()]
    sequence.dispose()
    const cpu = { prefillCpuMs: firstCpu - c0, decodeCpuMs: endCpu - firstCpu }
    return { prefillMs: first - t0, decodeMs: end - first, ...cpu, tokens: tokens.slice(0, 32).map(Number) }
  }
  await once(4) // warm-up
  return once(newTokens)
}

function cpuTimes() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  return { total: f.reduce((a, b) => a + b, 0), steal: f[7] ?? 0 }
}

async function child() {
  const [side, name] = [opt('side'), opt('model')]
  const root = side.startsWith('before') ? opt('before') : ROOT
  const r = side === 'llamacpp' ? await runLlamaCpp(MODELS[name]) : await runOurs(MODELS[name], side.endsWith('-f32') ? 'float32' : undefined, root)
  console.log(JSON.stringify(r))
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

function main() {
  const repeat = Number(opt('repeat', '3'))
  const names = opt('models', 'smollm2,gemma3').split(',')
  const sides = opt('sides', `ours,ours-f32,llamacpp${opt('before') ? ',before,before-f32' : ''}`).split(',')
  const env = { ...process.env, PEFT_NODE_NUM_THREADS: String(threads) }
  const results = {}
  for (const name of names) {
    if (!existsSync(MODELS[name])) throw new Error(`${MODELS[name]} is absent: run npm run fetch:${name}`)
    for (let rep = 0; rep < repeat; rep++) {
      for (const side of sides) {
        const [c0, load0] = [cpuTimes(), loadavg()[0]]
        const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', '--side', side, '--model', name, '--prompt', String(promptLen), '--new', String(newTokens), '--threads', String(threads), ...(opt('before') ? ['--before', opt('before')] : [])], { cwd: ROOT, encoding: 'utf8', env, maxBuffer: 1 << 24 })
        if (r.status !== 0) throw new Error(`${side} on ${name} failed (exit ${r.status ?? r.signal}):\n${r.stderr}`)
        const c1 = cpuTimes()
        const out = JSON.parse(r.stdout.trim().split('\n').pop())
        const run = {
          prompt: (promptLen / out.prefillMs) * 1000,
          decode: (newTokens / out.decodeMs) * 1000,
          // CPU milliseconds of the process per prompt token and per generated token.
          promptCpu: out.prefillCpuMs / promptLen,
          decodeCpu: out.decodeCpuMs / newTokens,
          steal: (100 * (c1.steal - c0.steal)) / Math.max(1, c1.total - c0.total),
          load: load0,
          tokens: out.tokens,
        }
        ;(results[`${name} ${side}`] ??= []).push(run)
        console.log(`${name} ${side.padEnd(9)} run ${rep + 1}: prompt ${run.prompt.toFixed(1)} tok/s, decode ${run.decode.toFixed(1)} tok/s, CPU ms/token prompt ${run.promptCpu.toFixed(2)} decode ${run.decodeCpu.toFixed(2)} (steal ${run.steal.toFixed(1)}%, load ${run.load.toFixed(2)})`)
      }
    }
  }
  console.log(`\n${promptLen}-token prompt, ${newTokens} greedy tokens, ${threads} threads; best / median`)
  for (const [key, runs] of Object.entries(results)) {
    const p = runs.map((r) => r.prompt)
    const d = runs.map((r) => r.decode)
    const cpu = (xs) => `${Math.min(...xs).toFixed(2)} / ${median(xs).toFixed(2)}`
    console.log(`${key.padEnd(18)} prompt ${Math.max(...p).toFixed(1)} / ${median(p).toFixed(1)}   decode ${Math.max(...d).toFixed(1)} / ${median(d).toFixed(1)}   CPU ms/token prompt ${cpu(runs.map((r) => r.promptCpu))} decode ${cpu(runs.map((r) => r.decodeCpu))}   steal ${runs.map((r) => r.steal.toFixed(0)).join(',')}%  load ${runs.map((r) => r.load.toFixed(1)).join(',')}`)
  }
  // Greedy agreement (first 32 tokens) of the kept-quantized base with the same file in
  // float32, and with the earlier build.
  for (const name of names) {
    for (const [a, b, what] of [['ours', 'ours-f32', 'quantized vs float32'], ['ours', 'before', 'quantized vs before']]) {
      const [q, f] = [results[`${name} ${a}`]?.[0], results[`${name} ${b}`]?.[0]]
      if (!q || !f) continue
      const same = q.tokens.findIndex((t, i) => t !== f.tokens[i])
      console.log(`${name}: ${what} greedy tokens ${same < 0 ? `agree on all ${q.tokens.length}` : `first differ at ${same}`}`)
    }
  }
}

if (argv.includes('--child')) await child()
else main()
