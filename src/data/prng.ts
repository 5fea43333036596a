// A small seeded PRNG (mulberry32: one 32-bit word of state, so its state is trivially saved in a
// checkpoint) and the helpers the data pipeline needs: seed mixing and a Fisher–Yates shuffle.

/** Mixes integers into one 32-bit seed (a splitmix-style hash), e.g. `mixSeed(seed, epoch)`. */
export function mixSeed(...parts: number[]): number {
  let h = 0x9e3779b9
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x85ebca6b)
    h ^= h >>> 13
    h = Math.imul(h, 0xc2b2ae35)
    h ^= h >>> 16
    h = (h + 0x9e3779b9) | 0
  }
  return h >>> 0
}

export class Rng {
  #state: number

  constructor(seed: number) {
    if (!Number.isInteger(seed)) throw new Error(`seed: expected an integer, found ${String(seed)}`)
    this.#state = seed >>> 0
  }

  /** A float in [0, 1). */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0)
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n)
  }

  /** Shuffles `a` in place (Fisher–Yates) and returns it. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1)
      ;[a[i], a[j]] = [a[j], a[i]]
    }
    return a
  }

  get state(): number {
    return this.#state
  }

  set state(s: number) {
    this.#state = s >>> 0
  }
}
