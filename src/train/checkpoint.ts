// Checkpoints: `checkpoints/step-00000010/{adapter/, optimizer.safetensors, trainer_state.json}`.
// Each is written into a `.tmp-*` folder and renamed into place, so a folder named `step-*`
// is always complete; leftovers of a killed save are never picked up and are swept later.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdir, open, rename, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { PeftModel } from '../peft'
import type { OptimizerStateDict } from '../optim/optimizer'
import type { LRSchedulerStateDict } from '../optim/scheduler'
import { OPTIMIZER_FILE, writeOptimizerState } from './optimizer-file'

export const STATE_FILE = 'trainer_state.json'
export const FORMAT = 'peft-node-trainer-checkpoint'
const STEP_DIR = /^step-(\d+)$/

export interface TrainerState {
  format: typeof FORMAT
  version: 1
  /** Optimizer steps done. */
  step: number
  totalSteps: number
  /** The next micro-batch: epoch and index in that epoch's plan. */
  position: { epoch: number; batch: number }
  /** Data order and dropout seeds are pure functions of this seed, the epoch and the step. */
  rng: { seed: number; algorithm: 'mulberry32/mix' }
  scheduler: LRSchedulerStateDict
  model: Record<string, unknown>
  adapter: { name: string; config: Record<string, unknown> }
  /** Train loss of the last step, for display. */
  loss: number | null
}

/** Test hook: called after each file of a checkpoint is written (before the rename). */
export const checkpointHooks: { afterWrite?: (file: string) => void | Promise<void> } = {}

const MODEL_KEYS = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'head_dim']
const VOLATILE = new Set(['base_model_name_or_path', 'inference_mode', 'peft_version', 'revision'])

export function modelFingerprint(peft: PeftModel): Record<string, unknown> {
  return Object.fromEntries(MODEL_KEYS.map((k) => [k, peft.config[k] ?? null]))
}

export function adapterFingerprint(peft: PeftModel): TrainerState['adapter'] {
  const name = peft.activeAdapter
  const config = Object.fromEntries(Object.entries(peft.peftConfig[name]).filter(([k]) => !VOLATILE.has(k)))
  return { name, config }
}

/** Writes and fsyncs off the JS thread (training keeps the event loop free). */
async function writeSynced(file: string, text: string): Promise<void> {
  const fh = await open(file, 'w')
  try {
    await fh.writeFile(text)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

export function checkpointName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`
}

export interface SaveParts {
  peft: PeftModel
  optimizer: OptimizerStateDict
  state: TrainerState
}

/** Writes a checkpoint atomically into `root` and returns its folder. */
export async function saveCheckpoint(root: string, parts: SaveParts): Promise<string> {
  await mkdir(root, { recursive: true })
  const final = join(root, checkpointName(parts.state.step))
  const tmp = join(root, `.tmp-${checkpointName(parts.state.step)}-${process.pid}-${Date.now()}`)
  await mkdir(tmp)
  await parts.peft.savePretrained(join(tmp, 'adapter'), { selectedAdapters: [parts.state.adapter.name] })
  await checkpointHooks.afterWrite?.('adapter')
  await writeOptimizerState(join(tmp, OPTIMIZER_FILE), parts.optimizer)
  await checkpointHooks.afterWrite?.(OPTIMIZER_FILE)
  await writeSynced(join(tmp, STATE_FILE), JSON.stringify(parts.state, null, 1))
  await checkpointHooks.afterWrite?.(STATE_FILE)
  if (existsSync(final)) {
    const old = `${tmp}-old`
    await rename(final, old)
    await rename(tmp, final)
    await rm(old, { recursive: true, force: true })
  } else {
    await rename(tmp, final)
  }
  return final
}

/** Complete checkpoints in `root`, oldest first. */
export function listCheckpoints(root: string): { step: number; dir: string }[] {
  if (!existsSync(root)) return []
  return readdirSync(root)
    .map((n) => [n, STEP_DIR.exec(n)] as const)
    .filter(([n, m]) => m && existsSync(join(root, n, STATE_FILE)))
    .map(([n, m]) => ({ step: Number(m![1]), dir: join(root, n) }))
    .sort((a, b) => a.step - b.step)
}

/** Deletes all but the newest `keep` checkpoints, and leftovers of interrupted saves. */
export async function pruneCheckpoints(root: string, keep: number): Promise<void> {
  if (!existsSync(root)) return
  const all = listCheckpoints(root)
  for (const c of all.slice(0, Math.max(0, all.length - keep))) await rm(c.dir, { recursive: true, force: true })
  for (const n of readdirSync(root)) if (n.startsWith('.tmp-') && !n.includes(`-${process.pid}-`)) await rm(join(root, n), { recursive: true, force: true })
}

/** A checkpoint folder itself, or the newest complete one in a checkpoints or output folder. */
export function resolveCheckpoint(path: string): string {
  const p = resolve(path)
  if (!existsSync(p)) throw new Error(`resumeFromCheckpoint: ${path} does not exist`)
  if (existsSync(join(p, STATE_FILE))) return p
  for (const root of [join(p, 'checkpoints'), p]) {
    const all = listCheckpoints(root)
    if (all.length > 0) return all[all.length - 1].dir
  }
  throw new Error(`resumeFromCheckpoint: no complete checkpoint in ${path} (expected a step-* folder with ${STATE_FILE}, or a folder holding checkpoints/)`)
}

export function readTrainerState(dir: string): TrainerState {
  let s: TrainerState
  try {
    s = JSON.parse(readFileSync(join(dir, STATE_FILE), 'utf8')) as TrainerState
  } catch (e) {
    throw new Error(`${join(dir, STATE_FILE)}: unreadable checkpoint state (${(e as Error).message})`)
  }
  if (s?.format !== FORMAT || s.version !== 1) throw new Error(`${join(dir, STATE_FILE)}: not a peft-node trainer checkpoint (format ${String(s?.format)}, version ${String(s?.version)})`)
  return s
}

function diff(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()
  return keys.filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k])).map((k) => `${k}: checkpoint ${JSON.stringify(a[k])}, model ${JSON.stringify(b[k])}`)
}

/** Throws a clear error when the checkpoint was made for another base model or another method/config. */
export function checkCompatible(dir: string, s: TrainerState, peft: PeftModel): void {
  const model = diff(s.model, modelFingerprint(peft))
  if (model.length) throw new Error(`${dir}: this checkpoint was trained on a different base model (${model.join('; ')})`)
  const mine = adapterFingerprint(peft)
  const [theirs, ours] = [s.adapter.config.peft_type, mine.config.peft_type]
  if (theirs !== ours) throw new Error(`${dir}: this checkpoint holds a ${String(theirs)} adapter, but the model carries a ${String(ours)} adapter`)
  if (theirs === 'ADALORA' && s.adapter.config.rank_pattern != null) {
    throw new Error(`${dir}: resuming AdaLoRA after its rank allocation has begun is not supported (the allocator's importance averages and the masked ranks' factors are not in the checkpoint); start again, or load the saved adapter`)
  }
  const cfg = diff(s.adapter.config, mine.config)
  if (cfg.length) throw new Error(`${dir}: the checkpoint's ${String(theirs)} config differs from the model's adapter (${cfg.join('; ')})`)
}

/**
 * Copies a saved adapter's weights into the live model's active adapter, exactly (f32 values).
 * (`loadAdapter` adds an adapter; it is loaded under a temporary name, copied, then deleted.)
 */
export async function loadAdapterWeights(peft: PeftModel, adapterDir: string): Promise<void> {
  const native = peft.baseModel.native
  const active = peft.activeAdapter
  const tmp = `resume_${process.pid}`
  await peft.loadAdapter(adapterDir, tmp, { isTrainable: false })
  try {
    const byName = new Map(native.parameters().map((p) => [p.name, p]))
    for (const p of native.parameters().filter((x) => x.requiresGrad)) {
      const at = p.name.lastIndexOf(`.${active}.`)
      const src = at < 0 ? undefined : byName.get(`${p.name.slice(0, at)}.${tmp}.${p.name.slice(at + active.length + 2)}`)
      if (!src) throw new Error(`${adapterDir}: the checkpoint has no weight for ${p.name}`)
      if (src.shape.join() !== p.shape.join()) throw new Error(`${adapterDir}: ${p.name} has shape [${src.shape}] in the checkpoint, [${p.shape}] in the model`)
      native.setParamData(p.name, await native.paramData(src.name).toFloat64Array())
    }
  } finally {
    peft.deleteAdapter(tmp)
  }
}
