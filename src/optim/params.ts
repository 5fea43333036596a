// Normalising what users pass as "params" (as torch accepts it) into plain lists, and the
// identity of a parameter. `namedParameters()` builds fresh Parameter objects on every call,
// so identity is (model, name), never object identity.
import { Parameter } from '../parameter'
import type { NativeModel } from '../native'
import { describe } from './validate'

export type NamedParameter = readonly [string, Parameter]
/** `Parameter[]`, `[name, Parameter][]` (as `namedParameters()` returns) or any iterable of them. */
export type ParamsLike = Iterable<Parameter | NamedParameter>
/** A parameter group as passed in: its params plus optional per-group hyper-parameters. */
export type GroupInput<H> = { params: ParamsLike | Parameter } & Partial<H> & Record<string, unknown>
export type OptimizerParams<H> = ParamsLike | Iterable<GroupInput<H>>

const modelIds = new WeakMap<object, number>()
let nextModelId = 0

/** A key equal for two Parameter objects that name the same weight of the same model. */
export function paramKey(p: Parameter): string {
  const m = p.native
  let id = modelIds.get(m)
  if (id === undefined) modelIds.set(m, (id = nextModelId++))
  return `${id}:${p.name}`
}

function isGroup(x: unknown): x is Record<string, unknown> & { params: unknown } {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Parameter) && 'params' in x
}

function toArray(where: string, x: unknown): unknown[] {
  if (x instanceof Parameter) return [x]
  const iterable = typeof x === 'object' && x !== null && typeof (x as Iterable<unknown>)[Symbol.iterator] === 'function'
  if (!iterable) throw new Error(`${where}: expected Parameters, [name, Parameter] pairs or parameter groups, found ${describe(x)}`)
  return Array.from(x as Iterable<unknown>)
}

/** A list of Parameters from a Parameter, `Parameter[]`, `[name, Parameter][]` or an iterable of them. */
export function toParamList(where: string, x: unknown): Parameter[] {
  return toArray(where, x).map((item, i) => {
    if (item instanceof Parameter) return item
    if (Array.isArray(item) && item.length === 2 && typeof item[0] === 'string' && item[1] instanceof Parameter) return item[1]
    throw new Error(`${where}[${i}]: expected a Parameter or a [name, Parameter] pair, found ${describe(item)}`)
  })
}

/** The groups the user meant: either one group of all params, or the groups given. */
export function toGroupInputs<H>(where: string, x: unknown): GroupInput<H>[] {
  const items = toArray(where, x)
  if (items.length === 0) throw new Error(`${where}: expected at least one parameter or parameter group, found an empty list`)
  const groups = items.filter(isGroup).length
  if (groups === 0) return [{ params: toParamList(where, items) } as unknown as GroupInput<H>]
  if (groups !== items.length) throw new Error(`${where}: expected either parameters or parameter groups ({ params, ... }), found a mix of both`)
  return items as GroupInput<H>[]
}

/** Parameters split by the model that owns them, keeping their order (one native call per model). */
export function byModel(params: Parameter[]): Map<NativeModel, Parameter[]> {
  const out = new Map<NativeModel, Parameter[]>()
  for (const p of params) {
    const list = out.get(p.native)
    if (list) list.push(p)
    else out.set(p.native, [p])
  }
  return out
}
