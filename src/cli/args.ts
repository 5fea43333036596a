// Command-line flags: `--key value`, `--key=value`, `--flag`, `--no-flag`, `-c file`; keys become
// camelCase (`--batch-size` and `--batch_size` are `batchSize`). Values stay strings here;
// `coerce` turns numbers and booleans into values.

export interface ParsedArgs {
  command: string | null
  positional: string[]
  flags: Record<string, string | boolean>
}

const SHORT: Record<string, string> = { c: 'config', m: 'model', o: 'output', h: 'help', p: 'prompt' }

export function camel(key: string): string {
  return key.replace(/[-_]+([a-z0-9])/g, (_, c: string) => c.toUpperCase())
}

export function parseArgs(argv: string[]): ParsedArgs {
  const out: ParsedArgs = { command: null, positional: [], flags: {} }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const long = /^--([^=]+)(?:=(.*))?$/.exec(a)
    const short = /^-([a-zA-Z])$/.exec(a)
    if (long || short) {
      let key = long ? long[1] : SHORT[short![1]] ?? short![1]
      let value: string | boolean | undefined = long?.[2]
      if (value === undefined) {
        if (key.startsWith('no-')) {
          key = key.slice(3)
          value = false
        } else if (i + 1 < argv.length && !/^--?[a-zA-Z]/.test(argv[i + 1])) value = argv[++i]
        else value = true
      }
      out.flags[camel(key)] = value
    } else if (out.command === null) out.command = a
    else out.positional.push(a)
  }
  return out
}

/** "3" -> 3, "1e-4" -> 0.0001, "true" -> true, "null" -> null; other strings unchanged. */
export function coerce(v: unknown): unknown {
  if (typeof v !== 'string') return v
  if (v === 'true') return true
  if (v === 'false') return false
  if (v === 'null') return null
  if (v.trim() !== '' && Number.isFinite(Number(v))) return Number(v)
  return v
}
