// The Trainer's pre-flight memory check (issue 11): the plan of one training step (src/plan/)
// against the memory available, before the optimizer or any activation is allocated. The
// model is loaded by then, so its weights (and the process baseline) count as resident and
// only what training adds must fit.
import type { PeftModel } from '../peft'
import { planMemory, checkPlanFits, type MemoryPlanResult } from '../plan'
import type { ResolvedOptions } from './options'

/** The longest row a micro-batch can have: padded to its longest example, or packed rows. */
export function longestRow(o: ResolvedOptions): number {
  if (o.packing && o.maxSeqLength) return o.maxSeqLength
  let longest = 1
  for (const e of o.trainExamples) longest = Math.max(longest, e.inputIds.length)
  return o.maxSeqLength ? Math.min(longest, o.maxSeqLength) : longest
}

export function trainingPlan(model: PeftModel, o: ResolvedOptions): MemoryPlanResult {
  const trainableParameters = model.parameters({ trainableOnly: true }).reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0)
  return planMemory(model.config as unknown as Record<string, unknown>, {
    trainableParameters,
    batchSize: o.batchSize,
    seqLen: longestRow(o),
    gradientCheckpointing: o.gradientCheckpointing,
    optimizer: 'adamw', // a custom optimizer is planned as AdamW (two moments: the common worst case)
  })
}

/** Throws (naming the biggest component and what to change) when the step will not fit. */
export function checkTrainingMemory(model: PeftModel, o: ResolvedOptions, available?: number): void {
  let plan: MemoryPlanResult
  try {
    plan = trainingPlan(model, o)
  } catch (e) {
    // A config the planner cannot read (an architecture it does not know) must not stop training.
    process.emitWarning(`memory check skipped: ${(e as Error).message}`, 'PeftWarning')
    return
  }
  const c = plan.components
  checkPlanFits(plan, plan, { available, resident: c.baseline + c.baseWeights + c.adapterWeights, escape: 'memoryCheck: false (--no-memory-check on the command line)' })
}
