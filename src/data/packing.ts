// Packing short examples into rows of up to maxSeqLength tokens, with no example attending to
// another: positions restart at 0 for each example, and segment ids (1, 2, ... per row, 0 on
// padding) let attention be block-diagonal. The first label of every example is -100, so no
// token is trained to predict the start of the next example.
// The native forward takes both (`positionIds`, `segmentIds`) and builds the mask from them.
import { IGNORE, type TokenizedExample } from './tokenize'
import { collate, type Batch } from './batches'

export interface PackedRow extends TokenizedExample {
  positionIds: number[]
  segmentIds: number[]
}

/** Greedily packs examples, in order, into rows of at most `maxSeqLength` tokens. */
export function packExamples(examples: TokenizedExample[], maxSeqLength: number): PackedRow[] {
  const rows: PackedRow[] = []
  let cur: PackedRow | null = null
  let segment = 0
  for (const ex of examples) {
    if (ex.inputIds.length > maxSeqLength) throw new Error(`${ex.where}: ${ex.inputIds.length} tokens do not fit in a packed row of ${maxSeqLength}`)
    if (!cur || cur.inputIds.length + ex.inputIds.length > maxSeqLength) {
      cur = { inputIds: [], labels: [], positionIds: [], segmentIds: [], where: ex.where }
      rows.push(cur)
      segment = 0
    }
    segment++
    cur.inputIds.push(...ex.inputIds)
    cur.labels.push(IGNORE, ...ex.labels.slice(1))
    cur.positionIds.push(...ex.inputIds.map((_, i) => i))
    cur.segmentIds.push(...ex.inputIds.map(() => segment))
  }
  return rows
}

/** Collates packed rows: as `collate`, plus position ids (0 on padding) and segment ids. */
export function collatePacked(rows: PackedRow[], padId: number): Batch {
  const b = collate(rows, padId)
  const len = b.inputIds[0].length
  const pad = (r: number[]) => r.concat(new Array<number>(len - r.length).fill(0))
  return { ...b, positionIds: rows.map((r) => pad(r.positionIds)), segmentIds: rows.map((r) => pad(r.segmentIds)) }
}

/**
 * The block-diagonal causal mask a packed row needs: query i may attend to key j iff j <= i and
 * both are in the same (non-padding) segment. For tests and for a JS reference of the native op.
 */
export function packedAttentionAllowed(segmentIds: number[], i: number, j: number): boolean {
  return j <= i && segmentIds[i] !== 0 && segmentIds[i] === segmentIds[j]
}
