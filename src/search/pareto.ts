// The Pareto front of (trainable parameters, validation loss), both minimised.

export interface Objectives {
  params: number
  valLoss: number
}

/** Whether `a` is at least as good as `b` on both objectives and better on one. */
export function dominates(a: Objectives, b: Objectives): boolean {
  return a.params <= b.params && a.valLoss <= b.valLoss && (a.params < b.params || a.valLoss < b.valLoss)
}

/**
 * The points no other point dominates, by increasing parameters (so by decreasing loss). Of
 * equal points the first is kept. Points with a non-finite loss are never on the front.
 */
export function paretoFront<T extends Objectives>(points: readonly T[]): T[] {
  const finite = points.filter((p) => Number.isFinite(p.valLoss) && Number.isFinite(p.params))
  // Sorted by params then loss, a point is on the front when its loss is below every earlier one's.
  const order = finite.map((p, i) => ({ p, i })).sort((a, b) => a.p.params - b.p.params || a.p.valLoss - b.p.valLoss || a.i - b.i)
  const front: T[] = []
  let best = Infinity
  for (const { p } of order) {
    if (p.valLoss < best) {
      front.push(p)
      best = p.valLoss
    }
  }
  return front
}
