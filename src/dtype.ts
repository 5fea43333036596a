// The dtype names, from the core's one table (`peft_core::dtype`, through the binding): torch's
// name, the aliases accepted on input, the storage name (F32, BF16, ...) and the byte size.
// Every TS entry point that reads a dtype name (the memory planner, the CLI's --dtype) uses
// it, so it accepts what loading and saving accept.
import { native } from './native'
import type { DTypeInfo } from '../index'

let table: DTypeInfo[] | undefined

/** Every floating-point dtype, in the core's order. */
export function dtypeTable(): DTypeInfo[] {
  return (table ??= native.dtypes())
}

/** The dtype a name or alias (`bf16`, `half`) stands for, or undefined. */
export function findDType(name: string): DTypeInfo | undefined {
  return dtypeTable().find((d) => d.name === name || d.aliases.includes(name))
}

/** The float dtype stored as `storage` (F32, F16, BF16, F64; any case), or undefined. */
export function dtypeOfStorage(storage: string): DTypeInfo | undefined {
  return dtypeTable().find((d) => d.storage === storage.toUpperCase())
}

/** "float32 (f32, float), float16 (f16, half), ..." for error messages. */
export function dtypeNames(): string {
  return dtypeTable()
    .map((d) => `${d.name} (${d.aliases.join(', ')})`)
    .join(', ')
}
