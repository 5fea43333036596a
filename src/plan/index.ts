// planMemory: bytes per component of a training step, from the model's config (a folder's
// config.json, a GGUF header, or a config object) without loading weights. docs/memory.md.
import { availableParallelism } from 'node:os'
import { computePlan, type ComponentName, type MemoryPlan } from './formula'
import { estimateAdapter } from './adapter'
import { plannedModel } from './model'
import { checkPlanFits, availableMemory, formatBytes, COMPONENT_LABELS, biggestComponent, type PlanContext } from './check'

export interface PlanMemoryOptions {
  /** The adapter's config (new LoraConfig({...}) or { peft_type, r, target_modules }); default LoRA r 8 on q_proj, v_proj. */
  method?: unknown
  /** Trainable parameters, when known (the loaded adapter's count); else estimated from `method`. */
  trainableParameters?: number
  batchSize?: number
  seqLen?: number
  /** The dtype the model is loaded with (every base weight in it); default: as stored. */
  dtype?: string
  /** Plan the matrices as a file of this ggml type would store them (e.g. 'Q4_0'): a base not yet converted. */
  baseType?: string
  gradientCheckpointing?: boolean
  optimizer?: 'adamw' | 'sgd'
  /** The Trainer's loss path (forward with returnLogits: false); false plans the full logits. Default true. */
  chunkedLoss?: boolean
  /** Node + the addon before anything is loaded (default 100 MiB, measured 60–100 MB). */
  baselineBytes?: number
}

/** The compute pool's size as the addon sets it (crates/peft-core/src/threads.rs `init_pool`). */
function computeThreads(): number {
  for (const name of ['PEFT_NODE_NUM_THREADS', 'RAYON_NUM_THREADS']) {
    const n = Number(process.env[name]?.trim())
    if (Number.isInteger(n) && n > 0) return n
  }
  return availableParallelism()
}

export interface MemoryPlanResult extends MemoryPlan {
  batchSize: number
  seqLen: number
  gradientCheckpointing: boolean
  trainableParameters: number
  /** The largest component other than the process baseline. */
  biggest: ComponentName
}

export const DEFAULT_BASELINE_BYTES = 100 * 2 ** 20

function positiveInt(name: string, v: unknown, d: number): number {
  const x = v ?? d
  if (!Number.isInteger(x) || (x as number) < 1) throw new Error(`planMemory: ${name}: expected an integer >= 1, found ${JSON.stringify(v)}`)
  return x as number
}

export function planMemory(model: string | Record<string, unknown>, opts: PlanMemoryOptions = {}): MemoryPlanResult {
  if (typeof opts !== 'object' || opts === null) throw new Error('planMemory: expected an options object')
  const batchSize = positiveInt('batchSize', opts.batchSize, 4)
  const seqLen = positiveInt('seqLen', opts.seqLen, 2048)
  const optimizer = opts.optimizer ?? 'adamw'
  if (optimizer !== 'adamw' && optimizer !== 'sgd') throw new Error(`planMemory: optimizer: expected "adamw" or "sgd", found ${JSON.stringify(opts.optimizer)}`)
  const gradientCheckpointing = opts.gradientCheckpointing ?? false
  if (typeof gradientCheckpointing !== 'boolean') throw new Error(`planMemory: gradientCheckpointing: expected a boolean, found ${JSON.stringify(opts.gradientCheckpointing)}`)
  const { shape, tensors, fileBytes } = plannedModel(model, opts.dtype, opts.baseType)
  const adapter = estimateAdapter(opts.method ?? { peft_type: 'LORA' }, shape)
  const trainableParameters = opts.trainableParameters ?? adapter.trainableParameters
  if (!Number.isInteger(trainableParameters) || trainableParameters < 0) throw new Error(`planMemory: trainableParameters: expected an integer >= 0, found ${JSON.stringify(opts.trainableParameters)}`)
  const plan = computePlan({
    shape, tensors, batchSize, seqLen, trainableParameters, adapterPaths: adapter.paths, gradientCheckpointing, optimizer,
    chunkedLoss: opts.chunkedLoss ?? true, fileBytes, keptInStorage: opts.dtype === undefined, baselineBytes: opts.baselineBytes ?? DEFAULT_BASELINE_BYTES,
    computeThreads: computeThreads(),
  })
  return { ...plan, batchSize, seqLen, gradientCheckpointing, trainableParameters, biggest: biggestComponent(plan) }
}

/** The plan as the CLI prints it: one line per component, then the total. */
export function formatPlan(plan: MemoryPlan): string[] {
  const rows = Object.entries(plan.components).map(([k, v]) => `  ${COMPONENT_LABELS[k as ComponentName].padEnd(18)}${formatBytes(v).padStart(12)}`)
  return [
    ...rows,
    `  ${'training step'.padEnd(18)}${formatBytes(plan.trainingTotal).padStart(12)}`,
    `  ${'while loading'.padEnd(18)}${formatBytes(plan.loadPeak).padStart(12)}  (the mapped checkpoint bytes beside the weights)`,
    `  ${'total (peak)'.padEnd(18)}${formatBytes(plan.total).padStart(12)}`,
  ]
}

export { checkPlanFits, availableMemory, formatBytes, COMPONENT_LABELS }
export type { PlanContext, MemoryPlan, ComponentName }
