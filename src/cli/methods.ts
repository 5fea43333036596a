// Method names on the command line -> PEFT configs. LoRA goes through LoraConfig (checked);
// every other method is passed through as `{ peft_type, ...options }` for the native core,
// which says clearly when it does not support one yet.
import { readFileSync } from 'node:fs'
import { LoraConfig } from '../methods/lora'
import { PeftConfig, RawPeftConfig, toSnake } from '../methods/config'
import { TRAIN_KEYS } from './config'

export const METHODS: Record<string, { peftType: string; defaults?: Record<string, unknown> }> = {
  lora: { peftType: 'LORA' },
  dora: { peftType: 'LORA', defaults: { useDora: true } },
  rslora: { peftType: 'LORA', defaults: { useRslora: true } },
  pissa: { peftType: 'LORA', defaults: { initLoraWeights: 'pissa' } },
  loha: { peftType: 'LOHA' }, lokr: { peftType: 'LOKR' }, adalora: { peftType: 'ADALORA' }, ia3: { peftType: 'IA3' },
  vera: { peftType: 'VERA' }, oft: { peftType: 'OFT' }, boft: { peftType: 'BOFT' }, fourierft: { peftType: 'FOURIERFT' },
  hra: { peftType: 'HRA' }, bone: { peftType: 'BONE' }, miss: { peftType: 'MISS' }, vblora: { peftType: 'VBLORA' },
  randlora: { peftType: 'RANDLORA' }, shira: { peftType: 'SHIRA' }, c3a: { peftType: 'C3A' }, road: { peftType: 'ROAD' },
  'ln-tuning': { peftType: 'LN_TUNING' }, 'prompt-tuning': { peftType: 'PROMPT_TUNING' }, 'prefix-tuning': { peftType: 'PREFIX_TUNING' },
  'p-tuning': { peftType: 'P_TUNING' }, 'adaption-prompt': { peftType: 'ADAPTION_PROMPT' }, 'trainable-tokens': { peftType: 'TRAINABLE_TOKENS' },
  mam: { peftType: 'MAM_ADAPTER' }, unipelt: { peftType: 'UNIPELT' },
}

const LIST_KEYS = new Set(['targetModules', 'excludeModules', 'layersToTransform', 'modulesToSave'])

function listish(key: string, v: unknown): unknown {
  if (!LIST_KEYS.has(key) || typeof v !== 'string' || v === 'all-linear') return typeof v === 'number' && LIST_KEYS.has(key) ? [v] : v
  return v.split(',').map((s) => s.trim()).filter(Boolean) // "self_attn.q_proj" matches as a `.name` suffix, as in PEFT
}

/** The method options among `opts` (everything that is not a trainer option). */
export function methodOptions(opts: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  if (typeof opts.methodConfig === 'string') Object.assign(out, JSON.parse(readFileSync(opts.methodConfig, 'utf8')) as Record<string, unknown>)
  else if (opts.methodConfig && typeof opts.methodConfig === 'object') Object.assign(out, opts.methodConfig)
  for (const [k, v] of Object.entries(opts)) if (!TRAIN_KEYS.has(k)) out[k] = listish(k, v)
  return out
}

/** A PEFT config for `--method <name>` (default lora) and its options. */
export function methodConfig(method: unknown, options: Record<string, unknown>): PeftConfig {
  const name = String(method ?? 'lora')
  const known = METHODS[name.toLowerCase()] ?? Object.values(METHODS).find((m) => m.peftType === name.toUpperCase())
  if (!known) throw new Error(`--method ${name}: unknown method; known: ${Object.keys(METHODS).join(', ')} (or a PEFT peft_type such as LORA)`)
  const o = { ...known.defaults, ...options }
  if (known.peftType === 'LORA') {
    return new LoraConfig({ r: 8, loraAlpha: 2 * Number(o.r ?? 8), loraDropout: 0, targetModules: ['q_proj', 'v_proj'], ...o })
  }
  const snake = Object.fromEntries(Object.entries(o).map(([k, v]) => [toSnake(k), v]))
  return new RawPeftConfig({ task_type: 'CAUSAL_LM', ...snake, peft_type: known.peftType })
}
