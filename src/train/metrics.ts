// The metrics log: one JSON object per line (`{"type":"train",...}`, `{"type":"eval",...}`),
// appended as training goes; on resume, lines past the resumed step are dropped first.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'

export interface MetricsRecord {
  type: 'train' | 'eval'
  step: number
  [key: string]: unknown
}

export class MetricsLog {
  constructor(readonly file: string) {
    mkdirSync(dirname(file), { recursive: true })
  }

  append(r: MetricsRecord): void {
    appendFileSync(this.file, JSON.stringify(r) + '\n')
  }

  /** Keeps only records up to `step` (a resumed run rewrites what came after). */
  truncateAfter(step: number): void {
    if (!existsSync(this.file)) return
    const kept = readMetrics(this.file).filter((r) => r.step <= step)
    writeFileSync(this.file, kept.map((r) => JSON.stringify(r) + '\n').join(''))
  }
}

export function readMetrics(file: string): MetricsRecord[] {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as MetricsRecord]
      } catch {
        return [] // a line cut by a crash
      }
    })
}
