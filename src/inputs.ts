// Normalising user inputs (number[][] or typed-array rows) into flat typed arrays, with
// errors that name the argument.

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

export function flatIds(name: string, rows: IdRows): Flat<Uint32Array> {
  const { batch, seq } = shapeOf(name, rows)
  const data = new Uint32Array(batch * seq)
  rows.forEach((r, i) => {
    for (let j = 0; j < seq; j++) {
      const v = r[j]
      if (!Number.isInteger(v) || v < 0) throw new Error(`${name}: expected non-negative integer token ids, found ${v} at [${i}, ${j}]`)
      data[i * seq + j] = v
    }
  })
  return { data, batch, seq }
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

export function flatLabels(name: string, rows: IdRows, batch: number, seq: number): Int32Array {
  const s = shapeOf(name, rows)
  if (s.batch !== batch || s.seq !== seq) {
    throw new Error(`${name}: expected shape [${batch}, ${seq}] (the shape of inputIds), found [${s.batch}, ${s.seq}]`)
  }
  const data = new Int32Array(batch * seq)
  rows.forEach((r, i) => {
    for (let j = 0; j < seq; j++) {
      const v = r[j]
      if (!Number.isInteger(v) || (v < 0 && v !== -100)) throw new Error(`${name}: expected token ids or -100, found ${v} at [${i}, ${j}]`)
      data[i * seq + j] = v
    }
  })
  return data
}

/** `adapterNames` (PEFT's `adapter_names`): one adapter name, or "__base__", per row. */
export function adapterNameList(names: unknown): string[] | undefined {
  if (names === undefined) return undefined
  if (!Array.isArray(names) || names.some((n) => typeof n !== 'string')) {
    throw new Error(`adapterNames: expected an array of adapter names (or "__base__"), one per row, found ${JSON.stringify(names)}`)
  }
  return names as string[]
}
