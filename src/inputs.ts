// Normalising user inputs (number[][] or typed-array rows) into flat typed arrays, and the one
// integer check at the JS -> native boundary, with errors that name the argument and the range.
//
// Why the ranges are checked here: napi reads JS numbers into u32/i32 by wrapping and truncating,
// and typed arrays do the same (Uint32Array.of(2 ** 32) is [0], Int32Array.of(4294967196) is
// [-100]), so an id of 2^32 reached the model as 0, a label 4294967196 as "ignored", and
// maxNewTokens 2^32 + 5 as 5, all silently.
import { IGNORE } from './data/tokenize'
import type { FisherBatch } from './methods/sparse'
import type { BatchInput } from '../index'

/** The largest u32 (token ids, counts). */
export const U32_MAX = 0xffffffff
/** The largest i32 (position ids). */
export const I32_MAX = 0x7fffffff

function show(v: unknown): string {
  return typeof v === 'number' || typeof v === 'bigint' ? String(v) : (JSON.stringify(v) ?? String(v))
}

const isIntIn = (v: unknown, min: number, max: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max

/** The valid ids for a vocabulary of `vocab` tokens (unknown: any u32). */
function idRange(vocab: number | undefined): { max: number; text: string } {
  return vocab === undefined ? { max: U32_MAX, text: `0..${U32_MAX}` } : { max: vocab - 1, text: `0..${vocab - 1} (the vocabulary)` }
}

/** A count or size: an integer in [min, max] (default: a u32). `note` follows the range, e.g. "(0 = off)". */
export function intArg(name: string, v: unknown, min = 0, max = U32_MAX, note = ''): number {
  if (!isIntIn(v, min, max)) throw new Error(`${name}: expected an integer in ${min}..${max}${note ? ` ${note}` : ''}, found ${show(v)}`)
  return v
}

/** A seed (an i64 natively): any integer a double holds exactly. */
export function seedArg(name: string, v: unknown): number {
  if (!Number.isSafeInteger(v)) throw new Error(`${name}: expected a safe integer, found ${show(v)}`)
  return v as number
}

/** One token id; `vocab` (when known) bounds it. */
export function tokenIdArg(name: string, v: unknown, vocab?: number): number {
  const r = idRange(vocab)
  if (!isIntIn(v, 0, r.max)) throw new Error(`${name}: expected a token id in ${r.text}, found ${show(v)}`)
  return v
}

/** A list of token ids; `at(k)` says where an id sits in the error (default ` at [k]`). */
export function tokenIdList(name: string, ids: ArrayLike<number>, vocab?: number, at: (k: number) => string = (k) => ` at [${k}]`): number[] {
  if (ids == null || typeof ids.length !== 'number' || typeof ids === 'string') throw new Error(`${name}: expected an array of token ids, found ${show(ids)}`)
  const r = idRange(vocab)
  const out = Array.from(ids)
  out.forEach((v, k) => {
    if (!isIntIn(v, 0, r.max)) throw new Error(`${name}: expected token ids in ${r.text}, found ${show(v)}${at(k)}`)
  })
  return out
}

export type IdRows = ArrayLike<number>[]

export interface Flat<T> {
  data: T
  batch: number
  seq: number
}

function shapeOf(name: string, rows: IdRows): { batch: number; seq: number } {
  if (!Array.isArray(rows) || rows.length === 0) {
    throw new Error(`${name}: expected a non-empty array of rows ([batch][seq]), found ${describe(rows)}`)
  }
  const seq = rows[0]?.length ?? 0
  rows.forEach((r, i) => {
    if (r == null || typeof r.length !== 'number') throw new Error(`${name}: row ${i} is not an array of numbers`)
    if (r.length !== seq) throw new Error(`${name}: expected rows of equal length ${seq}, found row ${i} of length ${r.length}`)
  })
  if (seq === 0) throw new Error(`${name}: expected non-empty rows, found rows of length 0`)
  return { batch: rows.length, seq }
}

function describe(x: unknown): string {
  if (Array.isArray(x)) return `an empty array`
  return x === null ? 'null' : typeof x
}

function flatten<T extends Uint32Array | Int32Array>(name: string, rows: IdRows, make: (n: number) => T, ok: (v: unknown) => boolean, expected: string): Flat<T> {
  const { batch, seq } = shapeOf(name, rows)
  const data = make(batch * seq)
  rows.forEach((r, i) => {
    for (let j = 0; j < seq; j++) {
      const v = r[j]
      if (!ok(v)) throw new Error(`${name}: expected ${expected}, found ${show(v)} at [${i}, ${j}]`)
      data[i * seq + j] = v
    }
  })
  return { data, batch, seq }
}

/** Token ids [batch][seq]; `vocab` (the model's vocab_size, when known) bounds them. */
export function flatIds(name: string, rows: IdRows, vocab?: number): Flat<Uint32Array> {
  const r = idRange(vocab)
  return flatten(name, rows, (n) => new Uint32Array(n), (v) => isIntIn(v, 0, r.max), `token ids in ${r.text}`)
}

/** Non-negative integers [batch][seq] up to `max` (position ids: an i32; segment ids: a u32). */
export function flatInts(name: string, rows: IdRows, max: number): Flat<Uint32Array> {
  return flatten(name, rows, (n) => new Uint32Array(n), (v) => isIntIn(v, 0, max), `integers in 0..${max}`)
}

export function flatMask(name: string, rows: IdRows, batch: number, seq: number): Uint8Array {
  const s = shapeOf(name, rows)
  if (s.batch !== batch || s.seq !== seq) {
    throw new Error(`${name}: expected shape [${batch}, ${seq}] (the shape of inputIds), found [${s.batch}, ${s.seq}]`)
  }
  const data = new Uint8Array(batch * seq)
  rows.forEach((r, i) => {
    for (let j = 0; j < seq; j++) {
      const v = r[j]
      if (v !== 0 && v !== 1) throw new Error(`${name}: expected 0 or 1, found ${v} at [${i}, ${j}]`)
      data[i * seq + j] = v
    }
  })
  return data
}

/** Labels [batch][seq] shaped as inputIds: -100 (ignored) or a token id below `vocab`. */
export function flatLabels(name: string, rows: IdRows, batch: number, seq: number, vocab?: number): Int32Array {
  const s = shapeOf(name, rows)
  if (s.batch !== batch || s.seq !== seq) {
    throw new Error(`${name}: expected shape [${batch}, ${seq}] (the shape of inputIds), found [${s.batch}, ${s.seq}]`)
  }
  // Labels travel as i32: a u32 id above I32_MAX could not be told from a negative one.
  const max = Math.min(idRange(vocab).max, I32_MAX)
  const ok = (v: unknown) => v === IGNORE || isIntIn(v, 0, max)
  return flatten(name, rows, (n) => new Int32Array(n), ok, `${IGNORE} or a token id in 0..${max}`).data
}

// Adapter names are identifiers, never paths: savePretrained writes adapter `x` to `dir/x`, so
// '/an/absolute/dir' or '../x' would write outside `dir`. Letters and digits of any script, "_"
// and "-"; no dots either, since the native core joins names into dot-separated parameter paths
// (and refuses them).
const ADAPTER_NAME = /^[\p{L}\p{N}_-]{1,128}$/u
/** In `adapterNames` (PEFT's `adapter_names`), the rows that run without an adapter. */
export const BASE_ROWS = '__base__'

/** Checks one adapter name; `isNew`: a name being given to an adapter, so not "__base__". */
export function adapterNameArg(arg: string, name: unknown, opts: { isNew?: boolean } = {}): string {
  if (typeof name !== 'string' || !ADAPTER_NAME.test(name)) {
    throw new Error(`${arg}: expected an adapter name: 1 to 128 letters, digits, "_" or "-" (a name, not a path), found ${show(name)}`)
  }
  if (opts.isNew && name === BASE_ROWS) throw new Error(`${arg}: "${BASE_ROWS}" is reserved: in adapterNames it means "no adapter"`)
  return name
}

/** A list of adapter names, each checked as `${arg}[i]`; undefined stays undefined. */
export function adapterNameArgs(arg: string, names: unknown): string[] | undefined {
  if (names === undefined) return undefined
  if (!Array.isArray(names)) throw new Error(`${arg}: expected an array of adapter names, found ${show(names)}`)
  return names.map((n, i) => adapterNameArg(`${arg}[${i}]`, n))
}

/** `adapterNames` (PEFT's `adapter_names`): one adapter name, or "__base__", per row. */
export function adapterNameList(names: unknown): string[] | undefined {
  return adapterNameArgs('adapterNames', names)
}

/** The per-token fields of a batch, as users give them ([batch][seq] rows). */
export interface BatchRows {
  inputIds: IdRows
  attentionMask?: IdRows
  labels?: IdRows
  positionIds?: IdRows
  segmentIds?: IdRows
}

/**
 * @internal A batch as every native call takes it (`BatchInput`): checked and flattened, each
 * field shaped as inputIds; errors name `${prefix}inputIds`, ... `vocab` bounds ids and labels.
 */
export function nativeBatch(prefix: string, b: BatchRows, vocab: number): BatchInput {
  const ids = flatIds(`${prefix}inputIds`, b.inputIds, vocab)
  const sized = (name: string, rows: IdRows, max: number): Uint32Array => {
    const f = flatInts(`${prefix}${name}`, rows, max)
    if (f.batch !== ids.batch || f.seq !== ids.seq) {
      throw new Error(`${prefix}${name}: expected shape [${ids.batch}, ${ids.seq}] (the shape of inputIds), found [${f.batch}, ${f.seq}]`)
    }
    return f.data
  }
  return {
    inputIds: ids.data,
    batch: ids.batch,
    seq: ids.seq,
    attentionMask: b.attentionMask ? flatMask(`${prefix}attentionMask`, b.attentionMask, ids.batch, ids.seq) : undefined,
    labels: b.labels ? flatLabels(`${prefix}labels`, b.labels, ids.batch, ids.seq, vocab) : undefined,
    positionIds: b.positionIds ? Int32Array.from(sized('positionIds', b.positionIds, I32_MAX)) : undefined,
    segmentIds: b.segmentIds ? sized('segmentIds', b.segmentIds, U32_MAX) : undefined,
  }
}

/** @internal Batches of ids and labels as the native Fisher estimates take them (checked, flat). */
export function flatBatches(batches: FisherBatch[], vocab: number): BatchInput[] {
  return batches.map((b, i) => {
    if (b.labels === undefined) throw new Error(`batches[${i}].labels: expected next-token labels, found undefined`)
    return nativeBatch(`batches[${i}].`, { inputIds: b.inputIds, attentionMask: b.attentionMask, labels: b.labels }, vocab)
  })
}
