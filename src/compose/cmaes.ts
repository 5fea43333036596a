// A small seeded CMA-ES (μ/μ_w, λ) for minimising a function of a few variables in a box,
// after Hansen, "The CMA Evolution Strategy: A Tutorial" (arXiv 1604.00772, Algorithm in
// §B.2, default parameters of Table 1). LoRAHub searches its weights with nevergrad's CMA
// family (Huang et al. 2024, §3); this is the same algorithm, not nevergrad's bit stream.
// Candidates outside the box are clipped before evaluation, and the clipped step is what
// updates the distribution (a repair, so the model never sees an out-of-box point).
import { Rng } from '../data/prng'

export interface CmaEsOptions {
  /** The start (the mean of the first generation). */
  x0: number[]
  /** The initial step size. */
  sigma0: number
  lower: number
  upper: number
  /** At most this many evaluations of `f`, the start included. */
  budget: number
  seed: number
  /** Candidates per generation (default 4 + ⌊3 ln n⌋). */
  popsize?: number
}

export interface CmaEsResult {
  best: number[]
  bestValue: number
  evaluations: number
  /** Every evaluated point and value, in order. */
  history: { x: number[]; value: number }[]
}

export async function cmaes(f: (x: number[]) => Promise<number>, o: CmaEsOptions): Promise<CmaEsResult> {
  const n = o.x0.length
  if (n === 0) throw new Error('cmaes: x0 must have at least one coordinate')
  const lambda = o.popsize ?? 4 + Math.floor(3 * Math.log(n))
  const mu = Math.floor(lambda / 2)
  const raw = Array.from({ length: mu }, (_, i) => Math.log(mu + 0.5) - Math.log(i + 1))
  const wsum = raw.reduce((a, b) => a + b, 0)
  const w = raw.map((x) => x / wsum)
  const mueff = 1 / w.reduce((a, x) => a + x * x, 0)
  const cc = (4 + mueff / n) / (n + 4 + (2 * mueff) / n)
  const cs = (mueff + 2) / (n + mueff + 5)
  const c1 = 2 / ((n + 1.3) ** 2 + mueff)
  const cmu = Math.min(1 - c1, (2 * (mueff - 2 + 1 / mueff)) / ((n + 2) ** 2 + mueff))
  const damps = 1 + 2 * Math.max(0, Math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
  const chiN = Math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))

  const rng = new Rng(o.seed)
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next())
  const clip = (x: number) => Math.min(o.upper, Math.max(o.lower, x))
  let mean = o.x0.map(clip)
  let sigma = o.sigma0
  let C = identity(n)
  const pc = new Array<number>(n).fill(0)
  const ps = new Array<number>(n).fill(0)
  const history: { x: number[]; value: number }[] = []
  const evalAt = async (x: number[]) => {
    const value = await f(x)
    if (!Number.isFinite(value)) throw new Error(`cmaes: the objective returned ${value} at [${x.join(', ')}]`)
    history.push({ x, value })
    return value
  }
  await evalAt(mean.slice())

  for (let gen = 0; history.length + lambda <= o.budget; gen++) {
    const { B, D } = eigenSym(C)
    const pop: { x: number[]; y: number[]; value: number }[] = []
    for (let k = 0; k < lambda; k++) {
      const z = Array.from({ length: n }, gauss)
      const bdz = B.map((row) => row.reduce((s, b, j) => s + b * D[j] * z[j], 0))
      const x = mean.map((m, i) => clip(m + sigma * bdz[i]))
      pop.push({ x, y: x.map((xi, i) => (xi - mean[i]) / sigma), value: await evalAt(x) })
    }
    pop.sort((a, b) => a.value - b.value)
    const yw = new Array<number>(n).fill(0)
    for (let k = 0; k < mu; k++) for (let i = 0; i < n; i++) yw[i] += w[k] * pop[k].y[i]
    mean = mean.map((m, i) => m + sigma * yw[i])
    // C^{-1/2} y_w = B D^{-1} Bᵀ y_w
    const bty = B[0].map((_, j) => B.reduce((s, row, i) => s + row[j] * yw[i], 0) / D[j])
    const invSqrtY = B.map((row) => row.reduce((s, b, j) => s + b * bty[j], 0))
    const csn = Math.sqrt(cs * (2 - cs) * mueff)
    for (let i = 0; i < n; i++) ps[i] = (1 - cs) * ps[i] + csn * invSqrtY[i]
    const psNorm = Math.hypot(...ps)
    const hsig = psNorm / Math.sqrt(1 - (1 - cs) ** (2 * (gen + 1))) / chiN < 1.4 + 2 / (n + 1) ? 1 : 0
    const ccn = Math.sqrt(cc * (2 - cc) * mueff)
    for (let i = 0; i < n; i++) pc[i] = (1 - cc) * pc[i] + hsig * ccn * yw[i]
    C = C.map((row, i) =>
      row.map((cij, j) => {
        let rankMu = 0
        for (let k = 0; k < mu; k++) rankMu += w[k] * pop[k].y[i] * pop[k].y[j]
        return (1 - c1 - cmu) * cij + c1 * (pc[i] * pc[j] + (1 - hsig) * cc * (2 - cc) * cij) + cmu * rankMu
      }),
    )
    sigma *= Math.exp((cs / damps) * (psNorm / chiN - 1))
  }
  // Whatever budget a full generation cannot use goes to samples around the final mean.
  while (history.length < o.budget) await evalAt(mean.map((m) => clip(m + sigma * gauss())))
  const best = history.reduce((a, b) => (b.value < a.value ? b : a))
  return { best: best.x, bestValue: best.value, evaluations: history.length, history }
}

function identity(n: number): number[][] {
  return Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)))
}

/** C = B diag(D²) Bᵀ for a symmetric C (cyclic Jacobi); D are the square roots of the eigenvalues. */
export function eigenSym(C: number[][]): { B: number[][]; D: number[] } {
  const n = C.length
  const a = C.map((r) => r.slice())
  const v = identity(n)
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] ** 2
    if (off < 1e-30) break
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p][q]) < 1e-300) continue
        const theta = (a[q][q] - a[p][p]) / (2 * a[p][q])
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1))
        const c = 1 / Math.sqrt(t * t + 1)
        const s = t * c
        for (let k = 0; k < n; k++) {
          const [akp, akq] = [a[k][p], a[k][q]]
          a[k][p] = c * akp - s * akq
          a[k][q] = s * akp + c * akq
        }
        for (let k = 0; k < n; k++) {
          const [apk, aqk] = [a[p][k], a[q][k]]
          a[p][k] = c * apk - s * aqk
          a[q][k] = s * apk + c * aqk
        }
        for (let k = 0; k < n; k++) {
          const [vkp, vkq] = [v[k][p], v[k][q]]
          v[k][p] = c * vkp - s * vkq
          v[k][q] = s * vkp + c * vkq
        }
      }
    }
  }
  // Eigenvalues are floored at a tiny positive value so that D⁻¹ stays finite.
  return { B: v, D: a.map((r, i) => Math.sqrt(Math.max(r[i], 1e-20))) }
}
