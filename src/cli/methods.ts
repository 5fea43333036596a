// Method names on the command line -> PEFT configs. LoRA goes through LoraConfig (checked);
// every other method is passed through as `{ peft_type, ...options }` for the native core,
// which validates the options.
import { LoraConfig } from '../methods/lora'
import { PeftConfig, RawPeftConfig, toSnake } from '../methods/config'
import { TRAIN_KEYS, normalise, readConfigFile } from './config'

/** Every method the native core supports, by its command-line name. */
export const METHODS: Record<string, { peftType: string; defaults?: Record<string, unknown> }> = {
  lora: { peftType: 'LORA' },
  dora: { peftType: 'LORA', defaults: { useDora: true } },
  rslora: { peftType: 'LORA', defaults: { useRslora: true } },
  pissa: { peftType: 'LORA', defaults: { initLoraWeights: 'pissa' } },
  loha: { peftType: 'LOHA' }, lokr: { peftType: 'LOKR' }, adalora: { peftType: 'ADALORA' }, ia3: { peftType: 'IA3' },
  vera: { peftType: 'VERA' }, 'ln-tuning': { peftType: 'LN_TUNING' },
  // PEFT has no default number of virtual tokens; 20 is the one its examples use.
  'prompt-tuning': { peftType: 'PROMPT_TUNING', defaults: { numVirtualTokens: 20 } },
  'prefix-tuning': { peftType: 'PREFIX_TUNING', defaults: { numVirtualTokens: 20 } },
  'p-tuning': { peftType: 'P_TUNING', defaults: { numVirtualTokens: 20 } },
  bottleneck: { peftType: 'BOTTLENECK_ADAPTER' }, 'parallel-adapter': { peftType: 'PARALLEL_ADAPTER' }, ssf: { peftType: 'SSF' },
  bias: { peftType: 'BIAS_TUNING' }, sparse: { peftType: 'SPARSE_MASK', defaults: { density: 0.01 } }, dylora: { peftType: 'DYLORA' }, mam: { peftType: 'MAM_ADAPTER' },
  unipelt: { peftType: 'UNIPELT' },
}

const LIST_KEYS = new Set(['targetModules', 'excludeModules', 'layersToTransform', 'modulesToSave'])

function listish(key: string, v: unknown): unknown {
  if (!LIST_KEYS.has(key) || typeof v !== 'string' || v === 'all-linear') return typeof v === 'number' && LIST_KEYS.has(key) ? [v] : v
  return v.split(',').map((s) => s.trim()).filter(Boolean) // "self_attn.q_proj" matches as a `.name` suffix, as in PEFT
}

/** The method options among `opts` (everything that is not a trainer option). */
export function methodOptions(opts: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  if (typeof opts.methodConfig === 'string') Object.assign(out, readConfigFile(opts.methodConfig, '--method-config', 'json'))
  else if (opts.methodConfig && typeof opts.methodConfig === 'object') Object.assign(out, opts.methodConfig)
  for (const [k, v] of Object.entries(opts)) if (!TRAIN_KEYS.has(k)) out[k] = listish(k, v)
  return out
}

/**
 * A PEFT config for `--method <name>` (default lora) and its options. AdaLoRA's `total_step`
 * (required by PEFT: the length of its rank budget schedule) defaults to `trainSteps`.
 */
export function methodConfig(method: unknown, options: Record<string, unknown>, trainSteps?: number): PeftConfig {
  const name = String(method ?? 'lora')
  const known = METHODS[name.toLowerCase()] ?? Object.values(METHODS).find((m) => m.peftType === name.toUpperCase())
  if (!known) throw new Error(`--method ${name}: unknown method; known: ${Object.keys(METHODS).join(', ')} (or a PEFT peft_type such as LORA)`)
  const o = { ...known.defaults, ...options }
  if (known.peftType === 'LORA') {
    return new LoraConfig({ r: 8, loraAlpha: 2 * Number(o.r ?? 8), loraDropout: 0, targetModules: ['q_proj', 'v_proj'], ...o })
  }
  if (known.peftType === 'ADALORA' && o.totalStep === undefined) {
    if (trainSteps === undefined) throw new Error(`--method ${name}: AdaLoRA needs total_step (the length of its rank budget schedule): pass --total-step N, or --steps N to use the training length`)
    o.totalStep = trainSteps
  }
  const snake = Object.fromEntries(Object.entries(o).map(([k, v]) => [toSnake(k), v]))
  return new RawPeftConfig({ task_type: 'CAUSAL_LM', ...snake, peft_type: known.peftType })
}

/**
 * Method fields given as command-line flags that the method does not have (the adapter's
 * "unknown … field" warnings): on the command line that is a typo (`--stpes 3`), so an error;
 * in a `--method-config` file such fields are kept with a warning, as PEFT does.
 */
export function rejectUnknownFlags(flags: Record<string, unknown>, warnings: string[], peftType: string): void {
  const given = new Set(Object.keys(normalise(flags)).filter((k) => !TRAIN_KEYS.has(k) && k !== 'demo').map(toSnake))
  const unknown = warnings.map((w) => /^unknown \w+ field `([^`]+)`/.exec(w)?.[1]).filter((k): k is string => k !== undefined && given.has(k))
  if (unknown.length > 0) {
    const flagsList = unknown.map((k) => `--${k.replace(/_/g, '-')}`).join(', ')
    throw new Error(`${flagsList}: not a trainer option, and ${peftType} has no such field (run \`peft-node help\` for the trainer options)`)
  }
}
