// Which options and arguments each command takes, checked before any work so that a typo
// (`--max-token 5`) is an error rather than silently ignored. `train` and `info` also take the
// fields of the adapter's method (`--r`, `--lora-alpha`, ...), which only the native core knows:
// those are checked by `cliPeftModel` (methods.ts) once the adapter exists.
import { TRAIN_KEYS, normalise } from './config'
import { SEARCH_OPTIONS } from './search'
import { LAPLACE_OPTIONS } from './laplace'
import { SOUP_OPTIONS } from './soup'

const GENERATION = ['maxTokens', 'maxNewTokens', 'temperature', 'temp', 'topP', 'topK', 'seed']
/** --model/--adapter may be Hub ids: their revisions, and the .gguf of a GGUF repo. */
const HUB = ['revision', 'adapterRevision', 'file']
/** `plan`'s own options, and the method fields the planner reads (src/plan/adapter.ts). */
export const PLAN_KEYS = ['model', 'config', 'batchSize', 'seqLen', 'maxSeqLength', 'dtype', 'baseType', 'gradientCheckpointing', 'optimizer', 'trainableParameters', 'method', 'methodConfig']
export const PLAN_METHOD_FIELDS = ['r', 'loraAlpha', 'loraDropout', 'targetModules', 'useDora', 'useRslora', 'feedforwardModules']

/** The options of each command, as `normalise` names them (camelCase, mlx-lm aliases resolved). */
export const COMMAND_OPTIONS: Record<string, { options: string[]; args?: string; methodFields?: boolean }> = {
  train: { options: [...TRAIN_KEYS], methodFields: true },
  generate: { options: ['model', 'adapter', 'config', 'prompt', 'system', 'raw', ...GENERATION, ...HUB], args: 'the prompt' },
  chat: { options: ['model', 'adapter', 'config', 'system', ...GENERATION, ...HUB] },
  eval: { options: ['model', 'adapter', 'config', 'data', 'batchSize', 'maxSeqLength', 'maskPrompt', ...HUB] },
  // With --adapter, info describes that adapter: method options do not apply (checked in infoCommand).
  info: { options: ['model', 'adapter', 'config', 'method', 'methodConfig', ...HUB], args: 'the model', methodFields: true },
  merge: { options: ['model', 'adapter', 'output', 'dtype', 'force', ...HUB] },
  export: { options: ['model', 'adapter', 'output', 'format', 'outtype', 'ollama', 'force', ...HUB] },
  plan: { options: [...PLAN_KEYS, ...PLAN_METHOD_FIELDS], args: 'the model' },
  search: { options: SEARCH_OPTIONS },
  // Laplace-LoRA (issue 16)
  laplace: { options: LAPLACE_OPTIONS },
  'adapter-soup': { options: SOUP_OPTIONS },
}

const ALWAYS = ['help']

export function flagName(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`
}

/** Levenshtein distance, for "did you mean" on flags of a few letters. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    prev = cur
  }
  return prev[b.length]
}

/** ` (did you mean --max-tokens?)` when one of the command's options is close to `key`. */
export function suggestion(key: string, options: Iterable<string>): string {
  const given = flagName(key)
  let best: string | null = null
  let bestD = 3 // at most two edits away
  for (const o of options) {
    const d = distance(given, flagName(o))
    if (d < bestD) [best, bestD] = [o, d]
  }
  return best ? ` (did you mean ${flagName(best)}?)` : ''
}

/**
 * The one wording of a refused option, for every command: `--x: not an option of \`cmd\``, with
 * `, and LORA has no such field` where the method's fields were options too.
 */
export function unknownOptionError(command: string, keys: string[], peftType?: string): Error {
  const known = [...COMMAND_OPTIONS[command].options]
  const method = peftType ? `, and ${peftType} has no such field` : ''
  return new Error(`${keys.map(flagName).join(', ')}: not an option of \`${command}\`${method}${suggestion(keys[0], known)}; run \`peft-node help\``)
}

/**
 * Refuses flags `command` does not take (all of them when it takes no method fields), and
 * arguments beyond the ones it takes. Returns the arguments.
 */
export function checkCommandLine(command: string, flags: Record<string, unknown>, positional: string[]): string[] {
  const spec = COMMAND_OPTIONS[command]
  if (!spec) return positional
  if (!spec.args && positional.length > 0) {
    const list = spec.options.length <= 10 ? spec.options.map(flagName).join(', ') : 'run `peft-node help`'
    throw new Error(`unexpected argument "${positional[0]}" (\`${command}\` takes options only: ${list})`)
  }
  // `info --adapter DIR` describes that adapter: the method and its fields do not apply there.
  const described = command === 'info' && flags.adapter !== undefined
  if (!spec.methodFields || described) {
    const allowed = new Set([...(described ? ['model', 'adapter', 'config', ...HUB] : spec.options), ...ALWAYS])
    const unknown = Object.keys(normalise(flags)).filter((k) => !allowed.has(k))
    if (unknown.length > 0) throw unknownOptionError(command, unknown)
  }
  return positional
}

/** The flags given to `command` that are not its own options: the method fields it may take. */
export function methodFlags(command: string, flags: Record<string, unknown>): string[] {
  const own = new Set([...COMMAND_OPTIONS[command].options, ...ALWAYS])
  return Object.keys(normalise(flags)).filter((k) => !own.has(k))
}
