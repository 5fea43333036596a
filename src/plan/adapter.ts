// Trainable parameters of an adapter config on a model shape, without building the adapter:
// LoRA (and rsLoRA, DoRA) and IA³, targeted as PEFT targets them. Other methods: pass
// `trainableParameters` (the Trainer passes the loaded adapter's exact count).
import { snakeKeys } from '../methods/config'
import type { ModelShape } from './formula'
import { layerLinears } from './model'

export interface AdapterEstimate {
  trainableParameters: number
  /** Per targeted linear (all layers): its output features and rank, for the activation term. */
  paths: { out: number; rank: number }[]
}

/** PEFT's defaults for LLaMA (TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING). */
const DEFAULT_TARGETS: Record<string, string[]> = { LORA: ['q_proj', 'v_proj'], IA3: ['k_proj', 'v_proj', 'down_proj'] }

function targeted(targets: unknown, fullName: string, method: string): boolean {
  if (targets === 'all-linear') return true
  if (typeof targets === 'string') return new RegExp(`^(?:${targets})$`).test(fullName)
  if (Array.isArray(targets)) return targets.some((t) => fullName === t || fullName.endsWith(`.${String(t)}`))
  throw new Error(`planMemory: method: ${method} target_modules must be a list of names, a regex string or "all-linear", found ${JSON.stringify(targets)}`)
}

function configObject(method: unknown): Record<string, unknown> {
  if (method === null || typeof method !== 'object') throw new Error(`planMemory: method: expected a method config (e.g. new LoraConfig({ r: 8 })) or an object with peft_type, found ${String(method)}`)
  const json = typeof (method as { toJSON?: unknown }).toJSON === 'function' ? (method as { toJSON(): Record<string, unknown> }).toJSON() : snakeKeys(method as Record<string, unknown>)
  return json
}

export function estimateAdapter(method: unknown, s: ModelShape): AdapterEstimate {
  const c = configObject(method)
  const type = String(c.peft_type ?? 'LORA').toUpperCase()
  if (type !== 'LORA' && type !== 'IA3') {
    throw new Error(`planMemory: method: ${type}'s trainable parameters are not estimated from a config (LORA and IA3 are); pass trainableParameters (e.g. from peft.printTrainableParameters)`)
  }
  const targets = c.target_modules ?? DEFAULT_TARGETS[type]
  const r = type === 'LORA' ? Number(c.r ?? 8) : 0
  if (type === 'LORA' && (!Number.isInteger(r) || r <= 0)) throw new Error(`planMemory: method: LORA r must be a positive integer, found ${JSON.stringify(c.r)}`)
  const ff = (c.feedforward_modules as string[] | undefined) ?? ['down_proj']
  let trainable = 0
  const paths: AdapterEstimate['paths'] = []
  for (let i = 0; i < s.layers; i++) {
    for (const [name, out, inp] of layerLinears(s)) {
      const full = `model.layers.${i}.${name}`
      if (!targeted(targets, full, type)) continue
      if (type === 'LORA') {
        trainable += r * (inp + out) + (c.use_dora === true ? out : 0) // DoRA: one magnitude per output
        paths.push({ out, rank: r })
      } else {
        trainable += ff.some((f) => full.endsWith(f)) ? inp : out // IA³ scales the input of feed-forward modules
        paths.push({ out, rank: 0 })
      }
    }
  }
  if (paths.length === 0) throw new Error(`planMemory: method: target_modules ${JSON.stringify(targets)} matches none of the model's linear layers (${layerLinears(s).map(([n]) => n.split('.')[1]).join(', ')})`)
  return { trainableParameters: trainable, paths }
}
