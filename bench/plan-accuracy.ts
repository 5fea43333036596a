// The memory planner against measured peak RSS (run by hand; docs/memory.md has the table).
// Each run trains a few LoRA steps (r 8, all-linear, AdamW, the chunked loss as the Trainer
// runs it) on a random-weight model (make-model.ts) in a child process of its own, so that its
// peak (VmHWM, as bench/peak-rss.ts) is measured alone, and prints predicted vs measured:
// the load's peak, then (VmHWM reset through /proc/self/clear_refs) the training steps' peak.
// Usage: npx tsx bench/plan-accuracy.ts [outDir] [run names...]   (default: the SmolLM2 runs)
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadavg, tmpdir } from 'node:os'
import { AdamW, LlamaModel, LoraConfig, getPeftModel, planMemory } from '../src'
import type { GgufOuttype } from '../src/model'
import { loadNative } from '../src/native'
import { SMOLLM2_135M, writeRandomLlama, type BenchConfig } from './make-model'

const LLAMA_32_1B: Partial<BenchConfig> = { vocab_size: 128256, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, head_dim: 64, rope_theta: 500000 }
interface Run { model: Partial<BenchConfig>; batch: number; seq: number; checkpointing: boolean; dtype?: 'bfloat16'; gguf?: 'q4_0'; tiled?: boolean; steps?: number }
// The *-q4_0 runs write the random model as a Q4_0 GGUF with our writer (LlamaModel.saveGguf) and
// train on it: they measure the quantized base only where the loader keeps block types.
const RUNS: Record<string, Run> = {
  'smollm2-4x256': { model: {}, batch: 4, seq: 256, checkpointing: false },
  'smollm2-4x256-ckpt': { model: {}, batch: 4, seq: 256, checkpointing: true },
  'smollm2-2x512': { model: {}, batch: 2, seq: 512, checkpointing: false },
  'smollm2-8x128': { model: {}, batch: 8, seq: 128, checkpointing: false },
  'smollm2-4x512-ckpt': { model: {}, batch: 4, seq: 512, checkpointing: true },
  'smollm2-bf16-4x256': { model: {}, batch: 4, seq: 256, checkpointing: false, dtype: 'bfloat16' },
  // 1B: tiled random weights (make-model.ts) and one step, to fit a loaded 2-core machine.
  'llama1b-f32-1x256-ckpt': { model: LLAMA_32_1B, batch: 1, seq: 256, checkpointing: true, tiled: true, steps: 1 },
  'llama1b-q4_0-1x256': { model: LLAMA_32_1B, batch: 1, seq: 256, checkpointing: false, dtype: 'bfloat16', gguf: 'q4_0', tiled: true, steps: 1 },
  'llama1b-q4_0-1x256-ckpt': { model: LLAMA_32_1B, batch: 1, seq: 256, checkpointing: true, dtype: 'bfloat16', gguf: 'q4_0', tiled: true, steps: 1 },
}
const DEFAULT_RUNS = ['smollm2-4x256', 'smollm2-4x256-ckpt', 'smollm2-2x512', 'smollm2-8x128']
const lora = () => new LoraConfig({ r: 8, loraAlpha: 16, targetModules: 'all-linear' })

/** Peak resident set size (VmHWM) in bytes. */
function vmHwm(): number {
  const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'))
  if (!m) throw new Error('/proc/self/status has no VmHWM (Linux only)')
  return Number(m[1]) * 1024
}

async function child(dir: string, model: string, checkpointing: boolean, steps: number): Promise<void> {
  loadNative()
  const baseline = process.memoryUsage().rss
  const ids: number[][] = JSON.parse(readFileSync(join(dir, 'inputs.json'), 'utf8'))
  const peft = await getPeftModel(await LlamaModel.fromPretrained(model), lora())
  peft.train()
  if (checkpointing) peft.gradientCheckpointingEnable()
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-3 })
  const loadPeak = vmHwm()
  writeFileSync('/proc/self/clear_refs', '5') // resets VmHWM to the current RSS (proc(5))
  const afterLoad = process.memoryUsage().rss
  for (let step = 0; step < steps; step++) {
    const out = await peft.forward({ inputIds: ids, labels: ids, returnLogits: false })
    await out.loss!.backward()
    await opt.step()
    opt.zeroGrad()
    out.loss!.dispose()
  }
  const trainPeak = vmHwm()
  const trainable = peft.parameters({ trainableOnly: true }).reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0)
  process.stdout.write(JSON.stringify({ baseline, loadPeak, afterLoad, trainPeak, trainable }) + '\n')
}

function main(): void {
  const out = process.argv[2] ?? join(tmpdir(), 'peft-node-plan-accuracy')
  const names = process.argv.length > 3 ? process.argv.slice(3) : DEFAULT_RUNS
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`
  console.log('run\tplanned total\tmeasured peak\tratio\tplanned step\tmeasured step\tratio\tplanned load\tmeasured load\tbaseline\tafter load\tload avg')
  for (const name of names) {
    const run = RUNS[name]
    if (!run) throw new Error(`unknown run "${name}" (runs: ${Object.keys(RUNS).join(', ')})`)
    const dir = join(out, name.replace(/-ckpt$/, '').replace(/-q4_0/, '').replace(/-\d+x\d+$/, '') + `-${run.batch}x${run.seq}`)
    writeRandomLlama(dir, { config: { ...SMOLLM2_135M, ...run.model }, batch: run.batch, seq: run.seq, dtype: run.dtype, tiled: run.tiled })
    const model = run.gguf ? join(dir, `model.${run.gguf}.gguf`) : dir
    if (run.gguf && !existsSync(model)) execFileSync(process.execPath, ['--import=tsx', __filename, '--gguf', dir, model, run.gguf], { stdio: 'inherit' })
    const load0 = loadavg()[0]
    const r = JSON.parse(execFileSync(process.execPath, ['--import=tsx', __filename, '--child', dir, model, String(run.checkpointing), String(run.steps ?? 2)], { encoding: 'utf8', maxBuffer: 1 << 20 }))
    const plan = planMemory(model, { method: lora(), batchSize: run.batch, seqLen: run.seq, gradientCheckpointing: run.checkpointing })
    if (plan.trainableParameters !== r.trainable) console.warn(`${name}: planned ${plan.trainableParameters} trainable parameters, the adapter has ${r.trainable}`)
    const load = `${load0.toFixed(1)}->${loadavg()[0].toFixed(1)}`
    const peak = Math.max(r.loadPeak, r.trainPeak)
    const cols = [mib(plan.total), mib(peak), (plan.total / peak).toFixed(3), mib(plan.trainingTotal), mib(r.trainPeak), (plan.trainingTotal / r.trainPeak).toFixed(3), mib(plan.loadPeak), mib(r.loadPeak), mib(r.baseline), mib(r.afterLoad), load]
    console.log(`${name}\t${cols.join('\t')}`)
  }
}

/** The random model as a GGUF of `outtype`, written by our writer to a temp name, then renamed. */
async function writeGguf(dir: string, path: string, outtype: string): Promise<void> {
  const m = await LlamaModel.fromPretrained(dir)
  await m.saveGguf(`${path}.tmp`, { outtype: outtype as GgufOuttype })
  m.dispose()
  renameSync(`${path}.tmp`, path)
}

if (process.argv[2] === '--gguf') {
  writeGguf(process.argv[3], process.argv[4], process.argv[5]).catch((e: Error) => {
    process.stderr.write(String(e.stack) + '\n')
    process.exit(1)
  })
} else if (process.argv[2] === '--child') {
  child(process.argv[3], process.argv[4], process.argv[5] === 'true', Number(process.argv[6])).catch((e: Error) => {
    process.stderr.write(String(e.stack) + '\n')
    process.exit(1)
  })
} else {
  main()
}
