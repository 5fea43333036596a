// Reading JSONL with the file and line of every record, so later errors can point at them.
import { readFileSync } from 'node:fs'

export interface Located<T = unknown> {
  value: T
  /** `file:line` for JSONL records, `data[i]` for arrays given from TypeScript. */
  where: string
}

/** Parses a JSONL file: one JSON object per non-blank line. Errors name `file:line`. */
export function readJsonl(file: string): Located[] {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new Error(`${file}: cannot read the data file (${(e as Error).message})`)
  }
  const out: Located[] = []
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '') return
    const where = `${file}:${i + 1}`
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch (e) {
      throw new Error(`${where}: malformed JSON (${(e as Error).message})`)
    }
    out.push({ value, where })
  })
  return out
}

/** Wraps records given from TypeScript; `name` prefixes their locations. */
export function locateArray(items: unknown[], name = 'data'): Located[] {
  return items.map((value, i) => ({ value, where: `${name}[${i}]` }))
}
