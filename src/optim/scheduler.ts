// Applies a schedule to an optimizer's groups, as torch's LambdaLR: each group's lr becomes
// initialLr × schedule(step). Construction applies step 0; call `step()` after each
// `optimizer.step()`. The base lr is kept in the group (`initialLr`, saved with the optimizer).
import type { Optimizer } from './optimizer'
import type { Schedule } from './schedules'
import { describe, nonNegativeInt } from './validate'

export interface LRSchedulerStateDict {
  last_epoch: number
  base_lrs: number[]
  _last_lr: number[]
}

export class LRScheduler {
  private readonly schedules: Schedule[]
  private baseLrs: number[]
  private lastLr: number[] = []
  /** The step whose lr is applied now (torch's last_epoch); 0 after construction. */
  lastStep = -1

  /** One schedule for all groups, or one per group. */
  constructor(
    private readonly optimizer: Optimizer<{ lr: number }, unknown>,
    schedule: Schedule | Schedule[],
  ) {
    const groups = optimizer?.paramGroups
    if (!Array.isArray(groups)) throw new Error(`LRScheduler: optimizer: expected an optimizer (AdamW, SGD, ...), found ${describe(optimizer)}`)
    this.schedules = Array.isArray(schedule) ? schedule : groups.map(() => schedule)
    if (this.schedules.length !== groups.length) {
      throw new Error(`LRScheduler: schedule: expected one schedule or ${groups.length} (one per group), found ${this.schedules.length}`)
    }
    this.schedules.forEach((s, i) => {
      if (typeof s !== 'function') throw new Error(`LRScheduler: schedule[${i}]: expected a function (step) => multiplier, found ${describe(s)}`)
    })
    for (const g of groups) g.initialLr ??= g.lr
    this.baseLrs = groups.map((g) => g.initialLr as number)
    this.step()
  }

  /** Advances one step and sets every group's lr. */
  step(): void {
    this.lastStep++
    this.apply()
  }

  /** The lr of each group as last set by this scheduler. */
  getLastLr(): number[] {
    return this.lastLr.slice()
  }

  stateDict(): LRSchedulerStateDict {
    return { last_epoch: this.lastStep, base_lrs: this.baseLrs.slice(), _last_lr: this.getLastLr() }
  }

  /** Resumes at the saved step and re-applies its lr. */
  loadStateDict(sd: LRSchedulerStateDict): void {
    const n = this.optimizer.paramGroups.length
    if (typeof sd !== 'object' || sd === null) throw new Error(`LRScheduler.loadStateDict: expected { last_epoch, base_lrs }, found ${describe(sd)}`)
    const last = nonNegativeInt('LRScheduler.loadStateDict: last_epoch', sd.last_epoch)
    const ok = Array.isArray(sd.base_lrs) && sd.base_lrs.length === n && sd.base_lrs.every((x) => typeof x === 'number' && x >= 0 && Number.isFinite(x))
    if (!ok) throw new Error(`LRScheduler.loadStateDict: base_lrs: expected ${n} finite numbers >= 0 (one per group), found ${describe(sd.base_lrs)}`)
    this.baseLrs = sd.base_lrs.slice()
    this.optimizer.paramGroups.forEach((g, i) => (g.initialLr = this.baseLrs[i]))
    this.lastStep = last
    this.apply()
  }

  private apply(): void {
    const groups = this.optimizer.paramGroups
    this.lastLr = groups.map((g, i) => {
      const m = this.schedules[i](this.lastStep)
      if (typeof m !== 'number' || !Number.isFinite(m) || m < 0) {
        throw new Error(`LRScheduler: schedule[${i}](${this.lastStep}) returned ${describe(m)}; expected a finite multiplier >= 0`)
      }
      return (g.lr = this.baseLrs[i] * m)
    })
  }
}
