// Runs a Trainer inside a worker_threads Worker (train-responsive.spec.ts) and streams its
// events to the parent.
import { parentPort, workerData } from 'node:worker_threads'
import { Trainer, loadData } from '../../src'
import { texts, tinyLora } from './train-data'

async function main(): Promise<void> {
  const { steps, output } = workerData as { steps: number; output: string }
  const peft = await tinyLora()
  const { train } = await loadData(texts(8), peft.tokenizer)
  const trainer = new Trainer(peft, { train, output, maxSteps: steps, batchSize: 2, learningRate: 1e-2 })
  trainer.on('step', (s) => parentPort!.postMessage({ type: 'step', step: s.step, loss: s.loss }))
  const end = await trainer.train()
  peft.dispose()
  parentPort!.postMessage({ type: 'end', step: end.step, reason: end.reason })
}

main().catch((e: Error) => parentPort!.postMessage({ type: 'error', message: e.stack ?? e.message }))
