// `peft-node plan`: the memory a training run will need, per component, from the model's
// config and tensor types alone (src/plan/, docs/memory.md); nothing is loaded.
import { planMemory, formatPlan, availableMemory, formatBytes, COMPONENT_LABELS } from '../plan'
import { trainOptions } from './config'
import { methodConfig, methodOptions } from './methods'
import { required } from './load'
import { PLAN_KEYS, PLAN_METHOD_FIELDS } from './options'
import type { Io } from './io'


const num = (v: unknown) => (v === undefined ? undefined : Number(v))
const bool = (v: unknown) => (v === undefined ? undefined : v === true || v === 'true')

/** Options shared by `plan` and `train`'s pre-flight check, from the command line. */
export function planOptionsFrom(o: Record<string, unknown>) {
  const rest = Object.fromEntries(Object.entries(o).filter(([k]) => !PLAN_KEYS.includes(k) && PLAN_METHOD_FIELDS.includes(k)))
  return {
    method: methodConfig(o.method, methodOptions({ ...rest, methodConfig: o.methodConfig })),
    batchSize: num(o.batchSize),
    seqLen: num(o.seqLen ?? o.maxSeqLength),
    dtype: o.dtype === undefined ? undefined : String(o.dtype),
    baseType: o.baseType === undefined ? undefined : String(o.baseType),
    gradientCheckpointing: bool(o.gradientCheckpointing),
    optimizer: o.optimizer as 'adamw' | 'sgd' | undefined,
    trainableParameters: num(o.trainableParameters),
  }
}

export function planCommand(flags: Record<string, unknown>, positional: string[], io: Io): void {
  if (positional.length > 1) throw new Error(`unexpected argument "${positional[1]}" (\`plan\` takes one: the model)`)
  const o: Record<string, unknown> = { ...trainOptions(flags), ...(positional.length === 1 ? { model: positional[0] } : {}) }
  const model = required(o, 'model', 'a Hugging Face checkpoint folder (config.json) or a .gguf file')
  const plan = planMemory(model, planOptionsFrom(o))
  io.out(`memory plan for ${model}: batch ${plan.batchSize} x ${plan.seqLen} tokens, ${plan.trainableParameters.toLocaleString('en-US')} trainable parameters, gradient checkpointing ${plan.gradientCheckpointing ? 'on' : 'off'}`)
  for (const line of formatPlan(plan)) io.out(line)
  const available = availableMemory()
  io.out(`biggest: ${COMPONENT_LABELS[plan.biggest]}; available now: ${formatBytes(available)} (${plan.total <= available ? 'fits' : 'does not fit'})`)
}
