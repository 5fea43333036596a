// The endless stream of micro-batches: epoch after epoch, each planned from (seed, epoch), so
// the data position {epoch, batch} is all a checkpoint needs to continue the same order.
import { collate, planEpoch, type Batch } from '../data/batches'
import { collatePacked, packExamples, type PackedRow } from '../data/packing'
import type { TokenizedExample } from '../data/tokenize'

export interface StreamOptions {
  batchSize: number
  seed: number
  shuffle: boolean
  lengthBucketing: boolean
  padTokenId: number
  /** Pack examples into rows of this many tokens (positions restart, block-diagonal attention). */
  packing?: boolean
  maxSeqLength?: number
}

export class BatchStream {
  position = { epoch: 0, batch: 0 }
  #plan: { epoch: number; batches: number[][] } | null = null
  readonly batchesPerEpoch: number

  private readonly examples: (TokenizedExample | PackedRow)[]

  constructor(
    examples: TokenizedExample[],
    private readonly o: StreamOptions,
  ) {
    this.examples = o.packing ? packExamples(examples, o.maxSeqLength!) : examples
    this.batchesPerEpoch = Math.ceil(this.examples.length / o.batchSize)
  }

  /** Micro-batches consumed so far over all epochs. */
  get consumed(): number {
    return this.position.epoch * this.batchesPerEpoch + this.position.batch
  }

  next(): Batch {
    if (this.position.batch >= this.batchesPerEpoch) this.position = { epoch: this.position.epoch + 1, batch: 0 }
    const { epoch, batch } = this.position
    if (this.#plan?.epoch !== epoch) this.#plan = { epoch, batches: planEpoch(this.examples.map((e) => e.inputIds.length), epoch, this.o) }
    this.position = { epoch, batch: batch + 1 }
    const rows = this.#plan.batches[batch].map((i) => this.examples[i])
    return this.o.packing ? collatePacked(rows as PackedRow[], this.o.padTokenId) : collate(rows, this.o.padTokenId)
  }
}
