// Training progress: on a TTY one redrawn bar (loss, lr, tokens/s, ETA); otherwise one plain
// line per step, fit for logs and CI.
import type { Trainer, EvalInfo, SaveInfo, StepInfo } from '../train/trainer'
import type { Io } from './io'
import type { HubProgress } from '../hub/settings'

export function duration(ms: number): string {
  if (!Number.isFinite(ms)) return '?'
  const s = Math.round(ms / 1000)
  const [h, m] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60)]
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(s % 60).padStart(2, '0')}s`
}

export function stepLine(s: StepInfo): string {
  const total = Number.isFinite(s.totalSteps) ? `/${s.totalSteps}` : ''
  return `step ${s.step}${total}  loss ${s.loss.toFixed(4)}  lr ${s.lr.toExponential(2)}  ${Math.round(s.tokensPerSecond)} tok/s  ETA ${duration(s.etaMs)}`
}

export function bar(s: StepInfo, width = 24): string {
  const frac = Number.isFinite(s.totalSteps) ? s.step / s.totalSteps : 0
  const done = Math.round(frac * width)
  return `[${'#'.repeat(done)}${'-'.repeat(width - done)}] ${stepLine(s)}`
}

export function attachProgress(trainer: Trainer, io: Io): void {
  let onBar = false
  const line = (text: string) => {
    if (onBar) io.write('\r\x1b[K')
    onBar = false
    io.out(text)
  }
  trainer.on('step', (s: StepInfo) => {
    if (io.isTTY) {
      io.write(`\r\x1b[K${bar(s)}`)
      onBar = true
    } else io.out(stepLine(s))
  })
  trainer.on('eval', (e: EvalInfo) => line(`eval at step ${e.step}: loss ${e.loss.toFixed(4)}  perplexity ${e.perplexity.toFixed(3)}`))
  trainer.on('save', (c: SaveInfo) => line(`checkpoint: ${c.dir}`))
  trainer.on('end', () => onBar && line(''))
}

export function megabytes(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`
}

/**
 * A Hub download's progress on stderr (stdout stays the command's output): on a terminal one
 * redrawn bar, at most ten times a second; otherwise one line per file.
 */
export function downloadProgress(io: Io): (p: HubProgress) => void {
  let file = ''
  let drawn = 0
  return (p) => {
    const done = p.total !== null && p.bytes >= p.total
    if (!io.errIsTTY || !io.errWrite) {
      if (p.file !== file) io.err(`downloading ${p.repoId}: ${p.file}${p.fileTotal === null ? '' : ` (${megabytes(p.fileTotal)})`}`)
      file = p.file
      return
    }
    file = p.file
    if (!done && Date.now() - drawn < 100) return
    drawn = Date.now()
    const frac = p.total ? Math.min(1, p.bytes / p.total) : 0
    const width = 24
    const filled = Math.round(frac * width)
    const size = p.total === null ? megabytes(p.bytes) : `${megabytes(p.bytes)}/${megabytes(p.total)}`
    io.errWrite(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${p.repoId} ${p.file}  ${size}${done ? '\n' : ''}`)
  }
}
