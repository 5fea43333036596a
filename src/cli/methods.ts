// Method names on the command line -> PEFT configs. LoRA goes through LoraConfig (checked);
// every other method is passed through as `{ peft_type, ...options }` for the native core,
// which validates the options.
import { LoraConfig } from '../methods/lora'
import { PeftConfig, RawPeftConfig, toCamel, toSnake } from '../methods/config'
import type { LlamaModel } from '../model'
import { getPeftModel, type PeftModel } from '../peft'
import { methodFlags, unknownOptionError } from './options'
import type { Io } from './io'
import { TRAIN_KEYS, readConfigFile } from './config'

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
  moslora: { peftType: 'MOSLORA' }, molora: { peftType: 'MOLORA' }, mov: { peftType: 'MOV' }, mixlora: { peftType: 'MIXLORA' },
  'lora-dropout': { peftType: 'LORA_DROPOUT' }, sora: { peftType: 'SORA' }, 'child-tuning': { peftType: 'CHILD_TUNING' },
  compacter: { peftType: 'COMPACTER' }, dept: { peftType: 'DEPT', defaults: { numVirtualTokens: 20 } },
  pafi: { peftType: 'SPARSE_MASK', defaults: { density: 0.005, maskType: 'smallest_magnitude' } },
  // Survey methods, part A (issue 16).
  'adapter-fusion': { peftType: 'ADAPTER_FUSION' }, mole: { peftType: 'MOLE' }, adamix: { peftType: 'ADAMIX' },
  smop: { peftType: 'SMOP', defaults: { numVirtualTokens: 5 } }, idpg: { peftType: 'IDPG', defaults: { numVirtualTokens: 5 } },
  'prefix-propagation': { peftType: 'PREFIX_PROPAGATION', defaults: { numVirtualTokens: 10 } },
  // Survey methods, part B (issue 16): masks rewritten during training, LoRA improvements.
  far: { peftType: 'FAR' }, 'lt-sft': { peftType: 'LT_SFT' }, 'fish-dip': { peftType: 'FISH_DIP' }, 'periodic-lora': { peftType: 'PERIODIC_LORA' },
  's-diff-pruning': { peftType: 'S_DIFF_PRUNING' }, 'intrinsic-said': { peftType: 'INTRINSIC_SAID' },
  // Laplace-LoRA (issue 16): LoRA, then the posterior fitted after training (src/cli/laplace.ts).
  'laplace-lora': { peftType: 'LORA' },
  // Issue 16: LPT.
  lpt: { peftType: 'LPT', defaults: { numVirtualTokens: 5 } },
}

const LIST_KEYS = new Set(['targetModules', 'excludeModules', 'layersToTransform', 'modulesToSave'])

function listish(key: string, v: unknown): unknown {
  if (!LIST_KEYS.has(key) || typeof v !== 'string' || v === 'all-linear') return typeof v === 'number' && LIST_KEYS.has(key) ? [v] : v
  const items = v.split(',').map((s) => s.trim()).filter(Boolean) // "self_attn.q_proj" matches as a `.name` suffix, as in PEFT
  return key === 'layersToTransform' ? items.map((s) => (/^\d+$/.test(s) ? Number(s) : s)) : items
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
 * getPeftModel for the CLI. Method fields given as command-line flags that the method does not
 * have (the adapter's `unknown_field` warnings) are typos there (`--stpes 3`): an error, and
 * not also a warning that says the field was kept. In a `--method-config` file such fields are
 * kept with a warning, as PEFT does; the other warnings print as `warning:` lines.
 */
export async function cliPeftModel(model: LlamaModel, config: PeftConfig, seed: number | undefined, command: string, flags: Record<string, unknown>, io: Io): Promise<PeftModel> {
  const peft = await getPeftModel(model, config, { seed, warn: false })
  const given = new Set(methodFlags(command, flags).map(toSnake))
  const unknown = peft.warningDetails.flatMap((w) => (w.code === 'unknown_field' && w.field !== null && given.has(w.field) ? [w.field] : []))
  if (unknown.length > 0) {
    peft.dispose()
    throw unknownOptionError(command, unknown.map(toCamel), String(config.peftType))
  }
  for (const w of peft.warnings) io.err(`warning: ${w}`)
  return peft
}
