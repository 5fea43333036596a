import type { NativeTensor } from './native'

export type DType = 'float32' | 'float16' | 'bfloat16' | 'float64'

/** A tensor in native memory. Call `dispose()` to free it early; the GC frees it eventually. */
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

  /** The value of a one-element tensor. */
  async item(): Promise<number> {
    const shape = this.shape
    const n = shape.reduce((a, b) => a * b, 1)
    if (n !== 1) throw new Error(`Tensor.item(): expected a tensor with one element, found shape [${shape.join(', ')}]`)
    return (await this.toFloat32Array())[0]
  }

  /** Backpropagates from this scalar loss; gradients add up in each trainable `Parameter.grad` until `zeroGrad()`. */
  async backward(): Promise<void> {
    return this.inner.backward()
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
