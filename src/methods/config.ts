// The base of every method's config: camelCase fields in TypeScript, PEFT's snake_case on
// disk. Fields not declared by a method pass through unchanged (snake_cased), so any
// PEFT option can be given; the native core validates them and warns about unknown ones.

import type { NativeModel } from '../native'
import type { NativeWarning } from '../../index'

export type PeftType = string

/** PEFT's one camelCase field (AdaLoraConfig's `deltaT`) keeps its name on disk. */
const PEFT_CAMEL = new Set(['deltaT'])

export function toSnake(key: string): string {
  return PEFT_CAMEL.has(key) ? key : key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)
}

export function toCamel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase())
}

/** Keys whose values are maps of module patterns: their own keys stay as written. */
const PATTERN_MAPS = new Set(['rank_pattern', 'alpha_pattern'])

export function snakeKeys(value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) {
    if (v === undefined) continue
    const key = toSnake(k)
    out[key] = v !== null && typeof v === 'object' && !Array.isArray(v) && !PATTERN_MAPS.has(key) ? snakeKeys(v as Record<string, unknown>) : v
  }
  return out
}

export function camelKeys(value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) {
    out[toCamel(k)] = v !== null && typeof v === 'object' && !Array.isArray(v) && !PATTERN_MAPS.has(k) ? camelKeys(v as Record<string, unknown>) : v
  }
  return out
}

export interface PeftConfigOptions {
  taskType?: string
  inferenceMode?: boolean
  [key: string]: unknown
}

export abstract class PeftConfig {
  abstract readonly peftType: PeftType
  readonly options: Record<string, unknown>

  constructor(options: PeftConfigOptions) {
    if (options === null || typeof options !== 'object') throw new Error(`config: expected an options object, found ${String(options)}`)
    this.options = { taskType: 'CAUSAL_LM', ...options }
  }

  /** `adapter_config.json`'s fields as PEFT names them. */
  toJSON(): Record<string, unknown> {
    return { ...snakeKeys(this.options), peft_type: this.peftType }
  }

  /**
   * @internal Adds the adapter when the JSON config alone cannot describe it (native handles,
   * e.g. Fisher scores); undefined: the plain path.
   */
  addTo(_native: NativeModel, _name: string, _seed: number): Promise<NativeWarning[]> | undefined {
    return undefined
  }
}

/** A config of any method, as read from an `adapter_config.json`. */
export class RawPeftConfig extends PeftConfig {
  readonly peftType: PeftType
  constructor(json: Record<string, unknown>) {
    const { peft_type, ...rest } = json
    if (typeof peft_type !== 'string') throw new Error('adapter config: `peft_type` is missing')
    super(camelKeys(rest))
    this.peftType = peft_type
  }
}

export function positiveInt(name: string, v: unknown): void {
  if (v !== undefined && (!Number.isInteger(v) || (v as number) <= 0)) throw new Error(`${name}: expected an integer > 0, found ${String(v)}`)
}

/** A finite number >= 0 when given (`integer`: an integer >= 0). */
export function nonNegative(name: string, v: unknown, integer = false): void {
  const ok = typeof v === 'number' && Number.isFinite(v) && v >= 0 && (!integer || Number.isInteger(v))
  if (v !== undefined && !ok) throw new Error(`${name}: expected ${integer ? 'an integer' : 'a number'} >= 0, found ${String(v)}`)
}

/** A share in (0, 1] when given. */
export function share(name: string, v: unknown): void {
  if (v !== undefined && !(typeof v === 'number' && v > 0 && v <= 1)) throw new Error(`${name}: expected a number in (0, 1], found ${String(v)}`)
}

export function probability(name: string, v: unknown): void {
  if (v !== undefined && !(typeof v === 'number' && v >= 0 && v < 1)) throw new Error(`${name}: expected a number in [0, 1), found ${String(v)}`)
}

/** The constructor of a method's config class: `options` may be left out when every field is optional. */
export type MethodConfigClass<O extends PeftConfigOptions, T extends string> = new (...args: {} extends O ? [options?: O] : [options: O]) => PeftConfig & { readonly peftType: T }

/**
 * The base of a method's config class (`class XConfig extends methodConfig(…) {}`): its
 * `peft_type` and the checks of its options, run after `PeftConfig`'s, which is all that differs
 * between those classes. Without options, `{}` is taken unless the method needs some (`optional` false).
 */
export function methodConfig<O extends PeftConfigOptions, T extends string>(peftType: T, check: (options: O) => void = () => {}, optional = true): MethodConfigClass<O, T> {
  class MethodConfig extends PeftConfig {
    readonly peftType: T = peftType
    constructor(options?: O) {
      const given = options === undefined && optional ? ({} as O) : (options as O)
      super(given)
      check(given)
    }
  }
  return MethodConfig as unknown as MethodConfigClass<O, T>
}
