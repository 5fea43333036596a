// Warnings as the core produces them: `{ code, field, message }`. Programs act on `code` and
// `field` (the CLI refuses a misspelled method flag, the unknown config field it became);
// people read `message`. They are emitted as process warnings of type PeftWarning, so a
// `process.on('warning')` listener gets the code and field too.
import type { NativeWarning } from '../index'

/**
 * - `unknown_field`: a config key the method does not have (kept and written back, as PEFT does)
 * - `ignored_field`: a key that has no effect here (`runtime_config`, ...)
 * - `non_finite`: an adapter tensor holding NaN or infinite values (`field`: its key)
 * - `adjusted`: a config value replaced by one that fits the model (`field`: its key)
 * - `context_length`: `maxNewTokens` capped at the model's context length
 * - `other`: the message says it
 */
export type PeftWarningCode = 'unknown_field' | 'ignored_field' | 'non_finite' | 'adjusted' | 'context_length' | 'other'

/** A peft-node warning: an Error (for `process.emitWarning`) with `code` and `field`. */
export class PeftWarning extends Error {
  override name = 'PeftWarning'
  readonly code: PeftWarningCode
  /** The config key or tensor name the warning is about, or null. */
  readonly field: string | null

  constructor(code: PeftWarningCode, field: string | null, message: string) {
    super(message)
    this.code = code
    this.field = field
  }

  /** @internal */
  static fromNative(w: NativeWarning): PeftWarning {
    return new PeftWarning(w.code as PeftWarningCode, w.field ?? null, w.message)
  }
}

/** Converts the core's warnings and, unless `emit` is false, emits each as a process warning. */
export function peftWarnings(native: NativeWarning[], emit = true): PeftWarning[] {
  const out = native.map((w) => PeftWarning.fromNative(w))
  if (emit) for (const w of out) process.emitWarning(w)
  return out
}
