// Child process for graph-release.spec.ts: trains LoRA for `steps` steps on the random checkpoint
// in `dir`, either as the README writes the loop (forward, backward, step, zeroGrad, nothing
// disposed) or with `logits.dispose(); loss.dispose()` after each step, then prints its peak
// RSS. A child of its own so that each loop's peak is measured alone. Freed pages go back at
// mimalloc's 10 ms (lean-alloc): what the peaks compare is what is alive, the graph.
import './lean-alloc'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AdamW, LlamaModel, LoraConfig, getPeftModel } from '../../src'

async function main(): Promise<void> {
  const [dir, mode, steps] = [process.argv[2], process.argv[3], Number(process.argv[4])]
  if (mode !== 'readme' && mode !== 'dispose') throw new Error(`mode: expected "readme" or "dispose", found ${mode}`)
  const ids: number[][] = JSON.parse(readFileSync(join(dir, 'inputs.json'), 'utf8'))
  const peft = await getPeftModel(await LlamaModel.fromPretrained(dir), new LoraConfig({ r: 8, loraAlpha: 16, targetModules: 'all-linear' }))
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-3 })
  for (let step = 0; step < steps; step++) {
    const { logits, loss } = await peft.forward({ inputIds: ids, labels: ids })
    await loss!.backward()
    await opt.step()
    opt.zeroGrad()
    if (mode === 'dispose') {
      logits.dispose()
      loss!.dispose()
    }
  }
  // maxRSS is in kilobytes.
  process.stdout.write(JSON.stringify({ mode, steps, peakBytes: process.resourceUsage().maxRSS * 1024 }) + '\n')
}

main().catch((e: Error) => {
  process.stderr.write(String(e.stack) + '\n')
  process.exit(1)
})
