// Sizes from untrusted configs are bounded by the model's shapes before anything is allocated
// (issue 15: `r`, `num_virtual_tokens` and `svdRank` of 1e12 aborted the process with "memory
// allocation of N bytes failed"). The fixture model: hidden 64, intermediate 160, 128 positions.
import test from 'ava'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  AdaLoraConfig,
  BottleneckAdapterConfig,
  DyLoraConfig,
  LlamaModel,
  LoKrConfig,
  LoraConfig,
  PeftModel,
  PrefixTuningConfig,
  PromptEncoderConfig,
  PromptTuningConfig,
  VeraConfig,
  getPeftModel,
} from '../src'
import { main } from '../src/cli/main'
import { capture } from './helpers/cli'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const HUGE = 1e12

test('huge sizes in a TS config are errors naming the key, for every method', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const cases: [string, unknown, RegExp][] = [
    ['LoRA r', new LoraConfig({ r: HUGE }), /key `r`: expected at most the model's widest layer \(160\).*found 1000000000000/],
    ['LoRA rank_pattern', new LoraConfig({ r: 4, rankPattern: { q_proj: HUGE } }), /key `rank_pattern.q_proj`: expected at most/],
    ['prompt tuning', new PromptTuningConfig({ numVirtualTokens: HUGE }), /key `num_virtual_tokens`: expected at most max_position_embeddings \(128\)/],
    ['prefix tuning', new PrefixTuningConfig({ numVirtualTokens: 4, prefixProjection: true, encoderHiddenSize: HUGE }), /key `encoder_hidden_size`/],
    ['p-tuning', new PromptEncoderConfig({ numVirtualTokens: HUGE }), /key `num_virtual_tokens`/],
    ['bottleneck', new BottleneckAdapterConfig({ bottleneckSize: HUGE }), /key `bottleneck_size`/],
    ['AdaLoRA', new AdaLoraConfig({ initR: HUGE, targetR: 4, totalStep: 10 }), /key `init_r`/],
    ['DyLoRA', new DyLoraConfig({ r: HUGE }), /key `r`/],
    ['LoKr', new LoKrConfig({ r: HUGE }), /key `r`/],
    ['VeRA', new VeraConfig({ r: HUGE }), /key `r`: expected at most 4 x/],
  ]
  for (const [what, config, message] of cases) {
    const err = await t.throwsAsync(getPeftModel(model, config as LoraConfig))
    t.regex(err!.message, message, what)
  }
  const fine = await getPeftModel(model, new LoraConfig({ r: 160 }))
  t.truthy(fine, 'a rank up to the widest layer is accepted, as PEFT accepts it')
  model.dispose()
})

test('a huge r or num_virtual_tokens in adapter_config.json is an error naming the file', async (t) => {
  const dir = tempDir(t)
  const write = (name: string, config: Record<string, unknown>) => {
    mkdirSync(join(dir, name))
    writeFileSync(join(dir, name, 'adapter_config.json'), JSON.stringify(config))
    // an empty safetensors file: the config must be refused before the weights are read
    const header = Buffer.from('{}')
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(header.length))
    writeFileSync(join(dir, name, 'adapter_model.safetensors'), Buffer.concat([len, header]))
    return join(dir, name)
  }
  const lora = write('lora', { peft_type: 'LORA', r: HUGE, lora_alpha: 8, target_modules: ['q_proj'] })
  const prompt = write('prompt', { peft_type: 'PROMPT_TUNING', num_virtual_tokens: HUGE, task_type: 'CAUSAL_LM' })
  for (const [folder, key] of [[lora, 'r'], [prompt, 'num_virtual_tokens']]) {
    const model = await LlamaModel.fromPretrained(MODEL_DIR)
    const err = await t.throwsAsync(PeftModel.fromPretrained(model, folder))
    t.true(err!.message.includes(join(folder, 'adapter_config.json')), err!.message)
    t.true(err!.message.includes(`key \`${key}\``), err!.message)
    model.dispose()
  }
})

test('addWeightedAdapter: a huge svdRank is an error', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const peft = await getPeftModel(model, new LoraConfig({ r: 4, targetModules: ['q_proj'] }))
  await peft.addAdapter('other', new LoraConfig({ r: 4, targetModules: ['q_proj'] }))
  const err = await t.throwsAsync(peft.addWeightedAdapter(['default', 'other'], [0.5, 0.5], 'mix', { combinationType: 'svd', svdRank: 4e9 }))
  t.regex(err!.message, /svd_rank`: expected at most the model.s widest layer \(160\)/, err!.message)
  model.dispose()
})

test('peft-node info --r with a huge value is an error, not an abort', async (t) => {
  const io = capture()
  t.is(await main(['info', '--model', MODEL_DIR, '--method', 'lora', '--r', String(HUGE)], io), 1)
  t.regex(io.errors(), /`r`: expected at most/)
})
