// Runs inside a worker_threads Worker (see workers.spec.ts): loads the fixture model, trains the
// norm weight, generates, and streams progress to the parent.
import { parentPort, workerData } from 'node:worker_threads'
import { LlamaModel } from '../../src'
import { trainNorm } from './train-norm'

interface Data {
  modelDir: string
  ids: number[]
  steps: number
  /** Int32Array over a SharedArrayBuffer: [arrived]; every worker waits until `parties` arrived. */
  barrier?: Int32Array
  parties?: number
}

async function main(): Promise<void> {
  const d = workerData as Data
  if (d.barrier) {
    // Hold every worker here, then all load the addon at the same moment.
    Atomics.add(d.barrier, 0, 1)
    Atomics.notify(d.barrier, 0)
    while (Atomics.load(d.barrier, 0) < d.parties!) Atomics.wait(d.barrier, 0, Atomics.load(d.barrier, 0), 50)
  }
  const model = await LlamaModel.fromPretrained(d.modelDir)
  const steps = await trainNorm(model, d.ids, d.steps, (r) => parentPort!.postMessage({ type: 'step', ...r }))
  const generated = await model.generate(d.ids, { maxNewTokens: 6, stopTokenIds: [] })
  model.dispose()
  parentPort!.postMessage({ type: 'done', losses: steps.map((s) => s.loss), generated })
}

main().catch((e: Error) => parentPort!.postMessage({ type: 'error', message: e.message, stack: e.stack }))
