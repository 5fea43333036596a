// One compute pool: PEFT_NODE_NUM_THREADS sizes it when the addon loads (default: the cores
// available, or RAYON_NUM_THREADS when only that is set); a bad value is a clear error.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'

const ROOT = join(__dirname, '..')

/** A fresh process (the pool is sized once per process) that prints numThreads(). */
function poolSize(env: Record<string, string | undefined>): { out: string; err: string; status: number | null } {
  const clean = { ...process.env }
  delete clean.PEFT_NODE_NUM_THREADS
  delete clean.RAYON_NUM_THREADS
  const r = spawnSync(process.execPath, ['-e', "console.log(require('./dist').numThreads())"], { cwd: ROOT, env: { ...clean, ...env }, encoding: 'utf8' })
  return { out: r.stdout.trim(), err: r.stderr, status: r.status }
}

test('PEFT_NODE_NUM_THREADS sizes the pool; the default is the cores available', (t) => {
  t.is(poolSize({ PEFT_NODE_NUM_THREADS: '3' }).out, '3')
  t.is(poolSize({ PEFT_NODE_NUM_THREADS: '1', RAYON_NUM_THREADS: '4' }).out, '1', 'ours wins over rayon\'s')
  t.is(poolSize({ RAYON_NUM_THREADS: '2' }).out, '2')
  t.is(poolSize({}).out, String(availableParallelism()))
})

test('a PEFT_NODE_NUM_THREADS that is not a positive whole number is refused, naming it', (t) => {
  for (const bad of ['0', 'two', '-1', '1.5']) {
    const r = poolSize({ PEFT_NODE_NUM_THREADS: bad })
    t.not(r.status, 0, bad)
    t.regex(r.err, /PEFT_NODE_NUM_THREADS: expected a positive whole number of threads, found/, bad)
  }
})
