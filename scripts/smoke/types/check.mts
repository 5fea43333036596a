// ESM consumer (node16 and bundler resolution): the "import" types (dist/index.d.mts).
import { LlamaModel, Tensor, Tokenizer, getPeftModel, LoraConfig, PeftModel, AdamW, type LoadOptions, type GenerateOptions, type ForwardOutput } from 'peft-node'
import peft from 'peft-node'

const opts: LoadOptions = { dtype: 'float32', device: 'cpu' }
const model: LlamaModel = await LlamaModel.fromPretrained('model', opts)
const gen: GenerateOptions = { maxNewTokens: 4, doSample: false }
const ids: number[] = await model.generate([1, 2, 3], gen)
const out: ForwardOutput = await model.forward({ inputIds: [ids], labels: [ids] })
const loss: number = await out.loss!.item()
const t: Tensor = out.logits
const shape: number[] = t.shape
const tok: Tokenizer | null = model.tokenizer
for (const [name, p] of model.namedParameters()) p.requiresGrad = name.endsWith('norm.weight')
const lora: PeftModel = await getPeftModel(model, new LoraConfig({ r: 8, targetModules: ['q_proj', 'v_proj'] }))
const opt = new AdamW(lora.parameters({ trainableOnly: true }), { lr: 1e-4 })
await opt.step()
await lora.savePretrained('out')
const same: typeof LlamaModel = peft.LlamaModel
// @ts-expect-error dtype is a closed union: the types are real, not `any`
await LlamaModel.fromPretrained('model', { dtype: 'int8' })
export { loss, shape, tok, same }
