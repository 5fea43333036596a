// The pre-flight check: a plan against the memory the machine has free, and the refusal that
// names the biggest component and what to change.
import { readFileSync } from 'node:fs'
import { freemem } from 'node:os'
import { COMPONENTS, type ComponentName, type MemoryPlan } from './formula'

/** MemAvailable from /proc/meminfo (what the kernel can hand out without swapping), else os.freemem(). */
export function availableMemory(): number {
  try {
    const m = /^MemAvailable:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))
    if (m) return Number(m[1]) * 1024
  } catch {
    // not Linux: fall through
  }
  return freemem()
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`
  return `${(n / 2 ** 10).toFixed(1)} KiB`
}

export const COMPONENT_LABELS: Record<ComponentName, string> = {
  baseline: 'process baseline', baseWeights: 'base weights', adapterWeights: 'adapter weights', gradients: 'gradients',
  optimizerState: 'optimizer state', activations: 'activations', logitsLoss: 'logits/loss', workspace: 'workspace',
}

export interface PlanContext {
  batchSize: number
  seqLen: number
  gradientCheckpointing: boolean
}

const SUGGESTIONS: Record<ComponentName, (c: PlanContext) => string[]> = {
  activations: (c) => [
    `a smaller batch size (${c.batchSize} -> ${Math.max(1, c.batchSize >> 1)}, with gradient accumulation to keep the effective batch)`,
    `a shorter sequence length (maxSeqLength / --max-seq-length ${c.seqLen} -> ${Math.max(1, c.seqLen >> 1)})`,
    ...(c.gradientCheckpointing ? [] : ['gradient checkpointing (keeps one input per layer, recomputes the layer in backward)']),
  ],
  logitsLoss: (c) => ['the chunked loss (forward with returnLogits: false, as the Trainer does)', `a smaller batch size (${c.batchSize} -> ${Math.max(1, c.batchSize >> 1)})`],
  workspace: (c) => [`a smaller batch size (${c.batchSize} -> ${Math.max(1, c.batchSize >> 1)})`, `a shorter sequence length (${c.seqLen} -> ${Math.max(1, c.seqLen >> 1)})`],
  baseWeights: () => ['a quantized base (a Q4_0 or Q4_K_M .gguf), or bf16 weights instead of f32'],
  adapterWeights: () => ['a smaller rank or fewer target modules'],
  gradients: () => ['a smaller rank or fewer target modules'],
  optimizerState: () => ['a smaller rank or fewer target modules (AdamW keeps two f32 moments per trainable parameter)'],
  baseline: () => ['closing other programs'],
}

/** The largest component (the baseline is not something to change). */
export function biggestComponent(plan: MemoryPlan): ComponentName {
  return COMPONENTS.filter((k) => k !== 'baseline').reduce((a, k) => (plan.components[k] > plan.components[a] ? k : a), 'baseWeights' as ComponentName)
}

/**
 * Throws when the plan needs more than `available`. `resident`: bytes of the plan already in
 * memory (the loaded model, when the Trainer checks), not needed again.
 */
export function checkPlanFits(plan: MemoryPlan, ctx: PlanContext, opts: { available?: number; resident?: number; escape?: string } = {}): void {
  const available = opts.available ?? availableMemory()
  // With the model resident its load is over: only the training step is still to come.
  const needed = opts.resident === undefined ? plan.total : plan.trainingTotal - opts.resident
  if (needed <= available) return
  const big = biggestComponent(plan)
  const tips = SUGGESTIONS[big](ctx)
  const what = opts.resident === undefined ? `about ${formatBytes(needed)}` : `about ${formatBytes(needed)} beyond the loaded model (${formatBytes(plan.trainingTotal)} in all)`
  throw new Error(
    `not enough memory: training needs ${what} but ${formatBytes(available)} is available ` +
      `(the biggest part is ${COMPONENT_LABELS[big]}, ${formatBytes(plan.components[big])}). ` +
      `Try ${tips.join('; or ')}. To start anyway, pass ${opts.escape ?? 'memoryCheck: false'}.`,
  )
}
