// Training progress: on a TTY one redrawn bar (loss, lr, tokens/s, ETA); otherwise one plain
// line per step, fit for logs and CI.
import type { Trainer, EvalInfo, SaveInfo, StepInfo } from '../train/trainer'
import type { Io } from './io'

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
