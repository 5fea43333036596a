// `train` options from a config file (JSON or YAML, as `mlx_lm.lora -c`) merged with flags
// (flags win). Keys may be snake_case, kebab-case or camelCase; mlx-lm's names are understood.
import { readFileSync } from 'node:fs'
import { camel, coerce } from './args'
import { MAX_YAML_DEPTH, parseYaml } from './yaml'

/** mlx-lm's config keys -> ours. */
const ALIASES: Record<string, string> = {
  iters: 'steps', maxSteps: 'steps', adapterPath: 'output', adapterFile: 'output', fineTuneType: 'method',
  gradAccumulationSteps: 'gradientAccumulationSteps', stepsPerEval: 'evalEvery', saveEvery: 'saveEvery',
  valBatches: 'evalBatches', gradCheckpoint: 'gradientCheckpointing', resumeAdapterFile: 'resume', lr: 'learningRate', rank: 'r',
}

/** Options every command understands outside the method's own. */
export const TRAIN_KEYS = new Set([
  'model', 'data', 'method', 'steps', 'epochs', 'batchSize', 'learningRate', 'output', 'resume', 'config',
  'gradientAccumulationSteps', 'maxSeqLength', 'warmupSteps', 'lrSchedule', 'maxGradNorm', 'evalEvery', 'evalBatches',
  'saveEvery', 'saveTotalLimit', 'seed', 'maskPrompt', 'validSplit', 'weightDecay', 'truncation', 'methodConfig', 'train', 'help', 'demo',
  'gradientCheckpointing', 'revision', 'file', 'memoryCheck', 'compose', 'searchResult',
])

/**
 * Nesting depth of a parsed value, counted without recursion: JSON.parse takes any depth, but a
 * 100,000-deep value later overflows the stack (JSON.stringify, option walks) with no file named.
 */
function nestingDepth(root: unknown): number {
  let max = 0
  const stack: [unknown, number][] = [[root, 1]]
  while (stack.length > 0) {
    const [v, d] = stack.pop()!
    if (typeof v !== 'object' || v === null) continue
    max = Math.max(max, d)
    for (const child of Object.values(v)) stack.push([child, d + 1])
  }
  return max
}

/**
 * A map of options from `file`: JSON when `format` is 'json' or the name ends in `.json`, else
 * the YAML subset. `flag` prefixes read errors (`--config x.yaml: cannot read it`).
 */
export function readConfigFile(file: string, flag = '--config', format: 'json' | 'auto' = 'auto'): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new Error(`${flag} ${file}: cannot read it (${(e as Error).message})`)
  }
  const json = format === 'json' || file.endsWith('.json')
  // Errors of the main config name the file (as YAML's `file:line:` do); --method-config's add the flag.
  const where = flag === '--config' ? file : `${flag} ${file}`
  let v: unknown
  try {
    v = json ? JSON.parse(text) : parseYaml(text, where)
  } catch (e) {
    throw new Error(json ? `${where}: malformed JSON (${(e as Error).message})` : (e as Error).message)
  }
  if (json && nestingDepth(v) > MAX_YAML_DEPTH) throw new Error(`${where}: nested deeper than ${MAX_YAML_DEPTH} levels (a config needs a few)`)
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${where}: expected a map of options at the top level`)
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
