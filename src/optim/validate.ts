// Argument checks shared by the optimizers, clipping and schedules. Every message names the
// argument (with its path, e.g. `AdamW: paramGroups[1].lr`) and says what was expected, so a
// bad hyper-parameter fails at construction (or at the step that sees it) instead of
// silently producing NaN weights.

/** A short, readable rendering of a bad value for error messages. */
export function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v)
  if (typeof v === 'number' || typeof v === 'boolean' || v == null) return String(v)
  if (Array.isArray(v)) return v.length <= 8 ? `[${v.map(describe).join(', ')}]` : `an array of length ${v.length}`
  return typeof v === 'object' ? `an object (${(v as object).constructor?.name ?? 'Object'})` : typeof v
}

function fail(where: string, what: string, v: unknown): never {
  throw new Error(`${where}: expected ${what}, found ${describe(v)}`)
}

/** A finite number >= 0 (learning rates, eps, weight decay, momentum, dampening). */
export function nonNegative(where: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) fail(where, 'a finite number >= 0', v)
  return v
}

/** A number > 0; `Infinity` allowed only when said (a max norm of Infinity means "never clip"). */
export function positive(where: string, v: unknown, allowInfinity = false): number {
  const ok = typeof v === 'number' && v > 0 && (allowInfinity ? !Number.isNaN(v) : Number.isFinite(v))
  if (!ok) fail(where, allowInfinity ? 'a number > 0 (Infinity allowed)' : 'a finite number > 0', v)
  return v as number
}

/** An integer >= 0 (step counts). */
export function nonNegativeInt(where: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) fail(where, 'an integer >= 0', v)
  return v
}

export function bool(where: string, v: unknown): boolean {
  if (typeof v !== 'boolean') fail(where, 'a boolean', v)
  return v
}

/** Adam's betas: two numbers, each in [0, 1) as torch requires. */
export function betas(where: string, v: unknown): [number, number] {
  const ok = Array.isArray(v) && v.length === 2 && v.every((b) => typeof b === 'number' && b >= 0 && b < 1)
  if (!ok) fail(where, 'two numbers [beta1, beta2], each in [0, 1)', v)
  return [v[0], v[1]]
}

/** A plain options object (or undefined), so that `new AdamW(params, 0.1)` fails clearly. */
export function options<T extends object>(where: string, v: unknown): Partial<T> {
  if (v === undefined) return {}
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(where, 'an options object', v)
  return v as Partial<T>
}
