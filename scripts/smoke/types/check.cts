// CommonJS consumer (node16 resolution): the "require" types (dist/index.d.ts).
import peft = require('peft-node')

async function main(): Promise<number> {
  const model: peft.LlamaModel = await peft.LlamaModel.fromPretrained('model', { device: 'cpu' })
  const { loss } = await model.forward({ inputIds: [[1, 2, 3]], labels: [[1, 2, 3]] })
  await loss!.backward()
  // @ts-expect-error generate takes options, not a number
  await model.generate([1], 4)
  return loss!.item()
}
export = main
