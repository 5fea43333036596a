// The addon in worker_threads: training off the main thread (what an Electron utility process or
// a server does), several workers loading the addon at once, and a worker terminated mid-run.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'
import { LlamaModel } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'
import { trainNorm, type StepReport } from './helpers/train-norm'

const ENTRY = join(__dirname, 'helpers', 'train-worker.ts')
const TSX = require.resolve('tsx/cjs')

interface Done {
  losses: number[]
  generated: number[]
  progress: StepReport[]
}

function spawn(workerData: Record<string, unknown>): { worker: Worker; done: Promise<Done> } {
  // Workers do not inherit the tsx hooks: register them, then load the TS entry.
  const worker = new Worker(`require(${JSON.stringify(TSX)}); require(${JSON.stringify(ENTRY)})`, { eval: true, workerData })
  const progress: StepReport[] = []
  const done = new Promise<Done>((resolve, reject) => {
    worker.on('message', (m: { type: string } & Record<string, unknown>) => {
      if (m.type === 'step') progress.push(m as unknown as StepReport)
      else if (m.type === 'done') resolve({ ...(m as unknown as Done), progress })
      else if (m.type === 'error') reject(new Error(`worker: ${String(m.stack ?? m.message)}`))
    })
    worker.on('error', reject)
    worker.on('exit', (code) => reject(new Error(`worker exited with ${code} before finishing`)))
  })
  return { worker, done }
}

const ids = () => inputs().input_ids[0].slice(0, 12)

test('training in a worker thread streams progress and matches the main thread', async (t) => {
  const { done } = spawn({ modelDir: MODEL_DIR, ids: ids(), steps: 3 })
  const res = await done
  t.deepEqual(
    res.progress.map((p) => p.step),
    [0, 1, 2],
    'one progress message per step',
  )
  t.true(res.losses.every(Number.isFinite))
  t.true(res.losses[2] < res.losses[0], `loss goes down: ${res.losses.join(' -> ')}`)
  t.is(res.generated.length, 12 + 6)

  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const here = await trainNorm(model, ids(), 3)
  const gen = await model.generate(ids(), { maxNewTokens: 6, stopTokenIds: [] })
  model.dispose()
  here.forEach((s, i) => t.true(Math.abs(s.loss - res.losses[i]) < 1e-5, `step ${i}: ${s.loss} vs ${res.losses[i]}`))
  t.deepEqual(gen, res.generated)
})

test('two workers load the addon at the same moment and train side by side', async (t) => {
  const barrier = new Int32Array(new SharedArrayBuffer(4))
  const runs = [0, 1].map(() => spawn({ modelDir: MODEL_DIR, ids: ids(), steps: 3, barrier, parties: 2 }))
  const [a, b] = await Promise.all(runs.map((r) => r.done))
  t.is(Atomics.load(barrier, 0), 2)
  t.deepEqual(a.losses, b.losses, 'same data, same losses')
  t.deepEqual(a.generated, b.generated)
  t.true(a.losses[2] < a.losses[0])
})

// Native work runs as napi AsyncTasks that own everything they touch, so terminating a
// worker mid-call cannot free what a task still reads.
test('terminating a worker mid-training leaves the addon usable', async (t) => {
  const { worker, done } = spawn({ modelDir: MODEL_DIR, ids: ids(), steps: 50 })
  done.catch(() => undefined)
  await new Promise<void>((resolve) => worker.once('message', () => resolve())) // the first step is done
  await worker.terminate()
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const [first] = await trainNorm(model, ids(), 1)
  t.true(Number.isFinite(first.loss))
  model.dispose()
})

// Node unloads the addon when the last Worker that loaded it exits; a second load must work
// (issue 15: SIGSEGV in mimalloc's thread init). Run in a child process whose main thread has
// not loaded the addon, as ava's has.
test('workers load the addon one after another, then the main thread does', (t) => {
  const script = join(__dirname, 'helpers', 'sequential-workers.js')
  const res = spawnSync(process.execPath, [script, MODEL_DIR, JSON.stringify(ids())], { encoding: 'utf8', timeout: 120_000 })
  t.is(res.signal, null, `killed by ${res.signal}: ${res.stderr}`)
  t.is(res.status, 0, res.stderr)
  const out = JSON.parse(res.stdout) as { first: number[]; second: number[]; mainLoaded: boolean }
  t.deepEqual(out.first, out.second, 'the reloaded addon computes the same losses')
  t.true(out.mainLoaded)
})

test('work racing on one model inside each of three workers, one terminated mid-race: the others settle with the sequential results or clear errors', async (t) => {
  const entry = join(__dirname, 'helpers', 'race-worker.ts')
  const dir = tempDir(t)
  const runs = [0, 1, 2].map((i) => {
    const worker = new Worker(`require(${JSON.stringify(TSX)}); require(${JSON.stringify(entry)})`, { eval: true, workerData: { modelDir: MODEL_DIR, dir: join(dir, `w${i}`), endless: i === 0 } })
    const ready = new Promise<void>((resolve) => worker.on('message', (m: { type: string }) => m.type === 'ready' && resolve()))
    const done = new Promise<string[]>((resolve, reject) => {
      worker.on('message', (m: { type: string; outcomes?: string[]; message?: string }) => {
        if (m.type === 'done') resolve(m.outcomes!)
        else if (m.type === 'error') reject(new Error(`worker ${i}: ${m.message}`))
      })
      worker.on('error', reject)
      worker.on('exit', (code) => reject(new Error(`worker ${i} exited with ${code} before finishing`)))
    })
    return { worker, ready, done }
  })
  // Terminate the first once its native work is in flight (it loops until terminated).
  await runs[0].ready
  await runs[0].worker.terminate()
  await t.throwsAsync(runs[0].done, { message: /exited/ })
  for (const [i, run] of runs.slice(1).entries()) {
    const outcomes = await run.done
    t.log(`worker ${i + 1}: ${outcomes.join(' | ')}`)
    for (const o of outcomes) t.regex(o, /^(same logits|ok|error: .*(disposed|closed).*)$/, `worker ${i + 1}: ${o}`)
  }
  // The addon still works on the main thread afterwards.
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  t.teardown(() => model.dispose())
  t.is((await model.generate(ids(), { maxNewTokens: 3, stopTokenIds: [] })).length, ids().length + 3)
})
