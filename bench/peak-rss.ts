// Peak RSS of LoRA training steps with and without gradient checkpointing and the chunked loss
// (`forward({ returnLogits: false })`), each configuration in a child process of its own so
// that its peak is measured alone. Models are random (make-model.ts):
//   vocab128k: Llama 3.2's 128256 vocabulary (tied, as in Llama 3.2 1B) on a small body (hidden 256, 2 layers), where the
//              [tokens × vocab] logits dominate: what the chunked loss is for;
//   deep:      hidden 512, 16 layers, vocab 32000: where the layers' activations dominate:
//              what checkpointing is for.
// Usage: npx tsx bench/peak-rss.ts [outDir]   (batch 4 × 256, 2 steps, prints a table)
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { AdamW, LlamaModel, LoraConfig, getPeftModel } from '../src'
import { SMOLLM2_135M, writeRandomLlama } from './make-model'

const MODELS = {
  vocab128k: { vocab_size: 128256, hidden_size: 256, intermediate_size: 704, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 64 },
  deep: { vocab_size: 32000, hidden_size: 512, intermediate_size: 1408, num_hidden_layers: 16, num_attention_heads: 8, num_key_value_heads: 4, head_dim: 64 },
}
const MODES = ['plain', 'checkpoint', 'chunked', 'both'] as const

async function child(dir: string, mode: string): Promise<void> {
  const ids: number[][] = JSON.parse(readFileSync(join(dir, 'inputs.json'), 'utf8'))
  const peft = await getPeftModel(await LlamaModel.fromPretrained(dir), new LoraConfig({ r: 8, loraAlpha: 16, targetModules: 'all-linear' }))
  peft.train()
  if (mode === 'checkpoint' || mode === 'both') peft.gradientCheckpointingEnable()
  const chunked = mode === 'chunked' || mode === 'both'
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-3 })
  const before = process.resourceUsage().maxRSS * 1024
  const t0 = Date.now()
  let lossValue = 0
  for (let step = 0; step < 2; step++) {
    const out = chunked ? await peft.forward({ inputIds: ids, labels: ids, returnLogits: false }) : await peft.forward({ inputIds: ids, labels: ids })
    lossValue = await out.loss!.item()
    await out.loss!.backward()
    await opt.step()
    opt.zeroGrad()
    out.loss!.dispose()
    if ('logits' in out) out.logits.dispose()
  }
  const peak = process.resourceUsage().maxRSS * 1024
  process.stdout.write(JSON.stringify({ mode, loadedBytes: before, peakBytes: peak, msPerStep: (Date.now() - t0) / 2, loss: lossValue }) + '\n')
}

function main(): void {
  const out = process.argv[2] ?? join(tmpdir(), 'peft-node-peak-rss')
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`
  for (const [name, shape] of Object.entries(MODELS)) {
    const dir = join(out, name)
    writeRandomLlama(dir, { config: { ...SMOLLM2_135M, ...shape }, batch: 4, seq: 256 })
    for (const mode of MODES) {
      const r = JSON.parse(execFileSync(process.execPath, ['--import=tsx', __filename, '--child', dir, mode], { encoding: 'utf8', maxBuffer: 1 << 20 }))
      console.log(`${name}\t${mode}\tpeak ${mib(r.peakBytes)}\tafter load ${mib(r.loadedBytes)}\t${r.msPerStep.toFixed(0)} ms/step\tloss ${r.loss.toFixed(6)}`)
    }
  }
}

if (process.argv[2] === '--child') {
  child(process.argv[3], process.argv[4]).catch((e: Error) => {
    process.stderr.write(String(e.stack) + '\n')
    process.exit(1)
  })
} else {
  main()
}
