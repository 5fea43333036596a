// Child process for train-resume.spec.ts: trains with a checkpoint every step and, while writing
// checkpoint number `pauseAt`, stops between two files and says so, so the parent can SIGKILL it
// mid-save.
import { Trainer, checkpointHooks, loadData } from '../../src'
import { texts, tinyLora } from './train-data'

async function main(): Promise<void> {
  const [out, pauseAt] = [process.argv[2], Number(process.argv[3])]
  const peft = await tinyLora()
  const { train } = await loadData(texts(8), peft.tokenizer)
  let saves = 0
  checkpointHooks.afterWrite = async (file) => {
    if (file === 'adapter') saves++
    if (saves === pauseAt && file === 'optimizer.safetensors') {
      process.stdout.write('PAUSED\n')
      await new Promise(() => undefined) // until killed
    }
  }
  await new Trainer(peft, { train, output: out, maxSteps: 10, batchSize: 2, saveEvery: 1, saveTotalLimit: 5 }).train()
}

main().catch((e: Error) => {
  process.stderr.write(String(e.stack) + '\n')
  process.exit(1)
})
