import type { NativeModel } from './native'
import { Tensor } from './tensor'

/** A named weight of a model. `requiresGrad` decides whether it trains. */
export class Parameter {
  /** @internal */
  constructor(
    private readonly model: NativeModel,
    readonly name: string,
    readonly shape: number[],
    /**
     * The storage type of a frozen base weight kept quantized or in half precision ("Q4_0",
     * "Q6K", "BF16", ...; see `LoadOptions.dtype`), null for a float32 parameter. Such a weight
     * cannot train; `data` gives it dequantized.
     */
    readonly storage: string | null = null,
  ) {}

  get requiresGrad(): boolean {
    return this.model.requiresGrad(this.name)
  }

  set requiresGrad(value: boolean) {
    this.model.setRequiresGrad(this.name, value)
  }

  /** The current value (shares memory with the parameter). */
  get data(): Tensor {
    return new Tensor(this.model.paramData(this.name))
  }

  /** The accumulated gradient, or null before any `backward()` reached it. */
  get grad(): Tensor | null {
    const g = this.model.paramGrad(this.name)
    return g ? new Tensor(g) : null
  }

  /** Overwrites the value (same number of elements; converted to the parameter's dtype). */
  setData(values: ArrayLike<number>): void {
    if (values.length !== this.numel) throw new Error(`${this.name}: expected ${this.numel} values, found ${values.length}`)
    this.model.setParamData(this.name, Float64Array.from(values))
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1)
  }

  /** @internal */
  get native(): NativeModel {
    return this.model
  }
}
