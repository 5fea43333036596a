import type { NativeTensor } from './native'

export type DType = 'float32' | 'float16' | 'bfloat16' | 'float64'

/** Options of `Tensor.backward`, as PyTorch's `retain_graph`. */
export interface BackwardOptions {
  /** Keep the forward's graph so that a second `backward()` can run through it (default false). */
  retainGraph?: boolean
}

/**
 * A tensor in native memory. `backward()` frees the autograd graph behind a loss and its logits
 * (they keep only their own data); `dispose()` frees that data now, or the GC frees it later.
 */
export class Tensor {
  /** @internal */
  constructor(private readonly inner: NativeTensor) {}

  /** @internal */
  get native(): NativeTensor {
    return this.inner
  }

  get shape(): number[] {
    return this.inner.shape
  }

  get dtype(): string {
    return this.inner.dtype
  }

  get disposed(): boolean {
    return this.inner.disposed
  }

  async toFloat32Array(): Promise<Float32Array> {
    return this.inner.toFloat32Array()
  }

  /** The values in float64 (exact for float64 models). */
  async toFloat64Array(): Promise<Float64Array> {
    return this.inner.toFloat64Array()
  }

  /** The value of a one-element tensor. */
  async item(): Promise<number> {
    const shape = this.shape
    const n = shape.reduce((a, b) => a * b, 1)
    if (n !== 1) throw new Error(`Tensor.item(): expected a tensor with one element, found shape [${shape.join(', ')}]`)
    return (await this.toFloat64Array())[0]
  }

  /**
   * Backpropagates from this scalar loss; gradients add up in each trainable `Parameter.grad`
   * until `zeroGrad()`. Then frees the forward's graph (saved activations), as PyTorch does:
   * a second `backward()` on this loss is an error unless the first had `{ retainGraph: true }`.
   */
  async backward(options: BackwardOptions = {}): Promise<void> {
    if (typeof options !== 'object' || options === null) throw new Error(`backward: options: expected an object, found ${options === null ? 'null' : typeof options}`)
    const { retainGraph } = options
    if (retainGraph !== undefined && typeof retainGraph !== 'boolean') {
      throw new Error(`backward: retainGraph: expected a boolean, found ${typeof retainGraph}`)
    }
    return this.inner.backward(retainGraph)
  }

  /** `this * factor`, still differentiable (e.g. weighting a micro-batch's loss). */
  mul(factor: number): Tensor {
    if (!Number.isFinite(factor)) throw new Error(`factor: expected a finite number, found ${factor}`)
    return new Tensor(this.inner.mulScalar(factor))
  }

  dispose(): void {
    this.inner.dispose()
  }

  [Symbol.dispose](): void {
    this.dispose()
  }
}
