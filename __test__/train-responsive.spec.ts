// Training keeps the event loop free (every native call is off the JS thread), and a
// worker_threads Worker can host a whole training run.
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'
import { Trainer, loadData } from '../src'
import { texts, tinyLora } from './helpers/train-data'
import { tempDir } from './helpers/temp'

/**
 * Nanoseconds the main thread has spent runnable but waiting for a CPU (the second field of
 * its schedstat), or 0 where /proc has no such file. On this shared 2-vCPU host, with the
 * pool's threads and other processes busy, the JS thread can wait tens of ms for a CPU
 * without anything of ours blocking it; that wait is not the event loop being blocked.
 */
function runQueueWaitNs(): number {
  try {
    return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[1])
  } catch {
    return 0
  }
}

test.serial('the event loop keeps ticking during training (setInterval gaps under 50 ms, less time spent waiting for a CPU)', async (t) => {
  const peft = await tinyLora()
  const { train, valid } = await loadData(texts(16), peft.tokenizer, { validSplit: 4 })
  const trainer = new Trainer(peft, { train, valid, output: tempDir(t), maxSteps: 30, batchSize: 4, evalEvery: 10, saveEvery: 10 })
  let [last, lastWait] = [performance.now(), runQueueWaitNs()]
  let worst = 0
  let worstRaw = 0
  let ticks = 0
  const timer = setInterval(() => {
    const [now, wait] = [performance.now(), runQueueWaitNs()]
    worstRaw = Math.max(worstRaw, now - last)
    worst = Math.max(worst, now - last - (wait - lastWait) / 1e6)
    ;[last, lastWait] = [now, wait]
    ticks++
  }, 5)
  const start = performance.now()
  await trainer.train()
  clearInterval(timer)
  t.log(`${ticks} ticks in ${(performance.now() - start).toFixed(0)} ms, largest gap ${worstRaw.toFixed(1)} ms, ${worst.toFixed(1)} ms without the wait for a CPU`)
  t.true(ticks > 10)
  t.true(worst < 50, `largest gap ${worst} ms (not counting the wait for a CPU)`)
  peft.dispose()
})

test.serial('a worker thread hosts a training run and streams its steps', async (t) => {
  const output = tempDir(t)
  const tsx = require.resolve('tsx/cjs')
  const entry = join(__dirname, 'helpers', 'trainer-worker.ts')
  const worker = new Worker(`require(${JSON.stringify(tsx)}); require(${JSON.stringify(entry)})`, { eval: true, workerData: { steps: 4, output } })
  const steps: number[] = []
  const end = await new Promise<{ step: number; reason: string }>((resolve, reject) => {
    worker.on('message', (m: { type: string; step: number; reason: string; message: string }) => {
      if (m.type === 'step') steps.push(m.step)
      else if (m.type === 'end') resolve(m)
      else reject(new Error(m.message))
    })
    worker.on('error', reject)
  })
  await worker.terminate()
  t.deepEqual(steps, [1, 2, 3, 4])
  t.deepEqual(end, { type: 'end', step: 4, reason: 'completed' } as typeof end)
  t.true(existsSync(join(output, 'adapter_model.safetensors')))
})
