// A small YAML subset for config files like mlx-lm's (`mlx_lm.lora -c config.yaml`): nested
// maps by indentation, `- item` lists, inline `[a, b]` and `{k: v}`, quoted strings, numbers,
// booleans, null and `#` comments. Anchors, multi-line strings and documents are not supported.
import { coerce } from './args'

/**
 * The deepest nesting (block and flow levels together) a config may have. The parser recurses
 * once per level, so without a bound a file like `a: [[[[…` 100,000 deep overflows the stack
 * and the error names neither file nor line; real configs nest 2 or 3 levels.
 */
export const MAX_YAML_DEPTH = 100

/** Where a value sits, for errors: `file:line`. */
type At = string

function tooDeep(at: At): Error {
  return new Error(`${at}: nested deeper than ${MAX_YAML_DEPTH} levels (a config needs a few)`)
}

/** One level deeper than `depth`, or an error past the bound. */
function enter(depth: number, at: At): number {
  if (depth >= MAX_YAML_DEPTH) throw tooDeep(at)
  return depth + 1
}

interface Line {
  indent: number
  text: string
  no: number
}

/** `depth`: the levels around this value (the line's block levels plus enclosing brackets). */
function scalar(raw: string, at: At, depth: number): unknown {
  const s = raw.trim()
  if (s === '' || s === '~') return null
  if (/^".*"$/.test(s)) {
    // A double-quoted scalar is JSON's string syntax; a stray quote inside (`"a"b"`) is the
    // user's typo, reported at its line (found by __test__/fuzz.spec.ts).
    try {
      return JSON.parse(s)
    } catch {
      throw new Error(`${at}: malformed double-quoted string ${s.length > 40 ? s.slice(0, 40) + '…' : s}`)
    }
  }
  if (/^'.*'$/.test(s)) return s.slice(1, -1).replace(/''/g, "'")
  if (/^\[.*\]$/.test(s)) {
    const inner = enter(depth, at)
    return splitFlow(s.slice(1, -1)).map((v) => scalar(v, at, inner))
  }
  if (/^\{.*\}$/.test(s)) {
    const inner = enter(depth, at)
    return Object.fromEntries(splitFlow(s.slice(1, -1)).map((kv) => {
      const i = kv.indexOf(':')
      return [kv.slice(0, i).trim().replace(/^["']|["']$/g, ''), scalar(kv.slice(i + 1), at, inner)]
    }))
  }
  return coerce(s)
}

/** The deepest bracket nesting in a flow value, outside quotes: one linear scan, so a 100,000-deep
 * value is refused before the recursive parse walks (and re-copies) it level by level. */
function flowDepth(s: string): number {
  let depth = 0
  let max = 0
  let quote = ''
  for (const c of s) {
    if (quote) quote = c === quote ? '' : quote
    else if (c === '"' || c === "'") quote = c
    else if (c === '[' || c === '{') max = Math.max(max, ++depth)
    else if (c === ']' || c === '}') depth--
  }
  return max
}

/** A value after `key:` or `- `, at block depth `depth`. */
function value(raw: string, at: At, depth: number): unknown {
  if (depth + flowDepth(raw) > MAX_YAML_DEPTH) throw tooDeep(at)
  return scalar(raw, at, depth)
}

function splitFlow(s: string): string[] {
  const parts: string[] = []
  let depth = 0
  let quote = ''
  let cur = ''
  for (const c of s) {
    if (quote) quote = c === quote ? '' : quote
    else if (c === '"' || c === "'") quote = c
    else if (c === '[' || c === '{') depth++
    else if (c === ']' || c === '}') depth--
    else if (c === ',' && depth === 0) {
      parts.push(cur)
      cur = ''
      continue
    }
    cur += c
  }
  if (cur.trim() !== '') parts.push(cur)
  return parts
}

function stripComment(s: string): string {
  let quote = ''
  for (let i = 0; i < s.length; i++) {
    const c = s[i]
    if (quote) quote = c === quote ? '' : quote
    else if (c === '"' || c === "'") quote = c
    else if (c === '#' && (i === 0 || /\s/.test(s[i - 1]))) return s.slice(0, i)
  }
  return s
}

function block(lines: Line[], start: number, indent: number, file: string, outer: number): [unknown, number] {
  const depth = enter(outer, `${file}:${lines[start].no}`)
  const isList = lines[start].text.startsWith('- ') || lines[start].text === '-'
  const out: Record<string, unknown> | unknown[] = isList ? [] : {}
  let i = start
  while (i < lines.length && lines[i].indent === indent) {
    const { text, no } = lines[i]
    const nested = (): [unknown, number] => (i + 1 < lines.length && lines[i + 1].indent > indent ? block(lines, i + 1, lines[i + 1].indent, file, depth) : [null, i + 1])
    if (isList) {
      if (!text.startsWith('-')) throw new Error(`${file}:${no}: expected a "- item" in this list`)
      const rest = text.slice(1).trim()
      if (rest === '') {
        const [v, next] = nested()
        ;(out as unknown[]).push(v)
        i = next
      } else {
        ;(out as unknown[]).push(value(rest, `${file}:${no}`, depth))
        i++
      }
      continue
    }
    const m = /^("[^"]*"|'[^']*'|[^:]+):(?:\s+(.*)|$)/.exec(text)
    if (!m) throw new Error(`${file}:${no}: expected "key: value"`)
    const key = m[1].replace(/^["']|["']$/g, '').trim()
    if (m[2] === undefined || m[2].trim() === '') {
      const [v, next] = nested()
      ;(out as Record<string, unknown>)[key] = v
      i = next
    } else {
      ;(out as Record<string, unknown>)[key] = value(m[2], `${file}:${no}`, depth)
      i++
    }
  }
  if (i < lines.length && lines[i].indent > indent) throw new Error(`${file}:${lines[i].no}: unexpected indentation`)
  return [out, i]
}

export function parseYaml(text: string, file = 'config'): unknown {
  const lines: Line[] = []
  text.split(/\r?\n/).forEach((raw, i) => {
    const s = stripComment(raw).replace(/\s+$/, '')
    if (s.trim() === '' || s.trim() === '---') return
    if (/^\s*\t/.test(s)) throw new Error(`${file}:${i + 1}: tabs are not allowed for indentation`)
    lines.push({ indent: s.length - s.trimStart().length, text: s.trim(), no: i + 1 })
  })
  if (lines.length === 0) return {}
  const [v, end] = block(lines, 0, lines[0].indent, file, 0)
  if (end < lines.length) throw new Error(`${file}:${lines[end].no}: unexpected indentation`)
  return v
}
