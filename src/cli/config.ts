// `train` options from a config file (JSON or YAML, as `mlx_lm.lora -c`) merged with flags
// (flags win). Keys may be snake_case, kebab-case or camelCase; mlx-lm's names are understood.
import { readFileSync } from 'node:fs'
import { camel, coerce } from './args'
import { parseYaml } from './yaml'

/** mlx-lm's config keys -> ours. */
const ALIASES: Record<string, string> = {
  iters: 'steps', maxSteps: 'steps', adapterPath: 'output', adapterFile: 'output', fineTuneType: 'method',
  gradAccumulationSteps: 'gradientAccumulationSteps', stepsPerEval: 'evalEvery', saveEvery: 'saveEvery',
  valBatches: 'evalBatches', resumeAdapterFile: 'resume', lr: 'learningRate', rank: 'r',
}

/** Options every command understands outside the method's own. */
export const TRAIN_KEYS = new Set([
  'model', 'data', 'method', 'steps', 'epochs', 'batchSize', 'learningRate', 'output', 'resume', 'config',
  'gradientAccumulationSteps', 'maxSeqLength', 'warmupSteps', 'lrSchedule', 'maxGradNorm', 'evalEvery', 'evalBatches',
  'saveEvery', 'saveTotalLimit', 'seed', 'maskPrompt', 'validSplit', 'weightDecay', 'truncation', 'methodConfig', 'train', 'help', 'demo',
])

export function readConfigFile(file: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new Error(`--config ${file}: cannot read it (${(e as Error).message})`)
  }
  let v: unknown
  try {
    v = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text, file)
  } catch (e) {
    throw new Error(file.endsWith('.json') ? `${file}: malformed JSON (${(e as Error).message})` : (e as Error).message)
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${file}: expected a map of options at the top level`)
  return v as Record<string, unknown>
}

/** Normalises keys and folds mlx-lm's `lora_parameters` into method options. */
export function normalise(raw: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(raw)) {
    const key = ALIASES[camel(k)] ?? camel(k)
    if (key === 'loraParameters' && v && typeof v === 'object') {
      const lp = normalise(v as Record<string, unknown>)
      if (lp.keys !== undefined) out.targetModules = lp.keys
      if (lp.dropout !== undefined) out.loraDropout = lp.dropout
      if (lp.alpha !== undefined) out.loraAlpha = lp.alpha
      else if (lp.scale !== undefined && lp.r !== undefined) out.loraAlpha = Number(lp.scale) * Number(lp.r) // mlx-lm: scale = alpha / r
      if (lp.r !== undefined) out.r = lp.r
      continue
    }
    out[key] = coerce(v)
  }
  return out
}

/** Config file (if `config` is set) overlaid with flags. */
export function trainOptions(flags: Record<string, unknown>): Record<string, unknown> {
  const fromFlags = normalise(flags)
  const file = typeof fromFlags.config === 'string' ? normalise(readConfigFile(fromFlags.config)) : {}
  return { ...file, ...fromFlags }
}
