// A trained-looking LoRA without a training run, for export checks.
import { Rng, type PeftModel } from '../../src'

/** PEFT initialises lora_B to zero: give it seeded N(0, sigma) values. */
export function randomizeB(peft: PeftModel, seed: number, sigma: number): void {
  const rng = new Rng(seed)
  for (const [name, p] of peft.namedParameters({ trainableOnly: true })) {
    if (!name.includes('lora_B')) continue
    const n = p.shape.reduce((a, b) => a * b, 1)
    const v = new Float32Array(n)
    for (let i = 0; i < n; i++) v[i] = sigma * Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next())
    p.setData(v)
  }
}
