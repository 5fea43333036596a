// The `peft-node` CLI, run in-process with captured output: train from flags and from a YAML
// config (mlx-lm style), resume, any method by name, eval, info, generate, merge, bad input.
import test from 'ava'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { main } from '../src/cli/main'
import { parseArgs } from '../src/cli/args'
import { parseYaml } from '../src/cli/yaml'
import { capture } from './helpers/cli'
import { MODEL_DIR } from './helpers/fixtures'
import { completions, tinyLora, writeJsonl } from './helpers/train-data'
import { tempDir, type Teardown } from './helpers/temp'

function dataDir(t: Teardown): string {
  const d = join(tempDir(t, 'peft-node-cli-'), 'data')
  mkdirSync(d)
  writeJsonl(join(d, 'train.jsonl'), completions(12))
  writeJsonl(join(d, 'valid.jsonl'), completions(4))
  return d
}

const BASE = ['--model', MODEL_DIR, '--batch-size', '2', '--learning-rate', '1e-2']

test('flags: kebab, snake, =, booleans, --no-x, short -c', (t) => {
  const a = parseArgs(['train', '--batch-size', '4', '--learning_rate=1e-4', '--mask-prompt', '--no-shuffle', '-c', 'x.yaml', 'extra'])
  t.deepEqual(a, { command: 'train', positional: ['extra'], flags: { batchSize: '4', learningRate: '1e-4', maskPrompt: true, shuffle: false, config: 'x.yaml' } })
})

test('the YAML subset reads an mlx-lm config', (t) => {
  const y = parseYaml('# mlx-lm\nmodel: "m"\ntrain: true\niters: 600  # steps\nlearning_rate: 1e-5\nlora_parameters:\n  keys: ["self_attn.q_proj", \'self_attn.v_proj\']\n  rank: 8\n  scale: 20.0\nlist:\n  - a\n  - 2\n', 'c.yaml')
  t.deepEqual(y, { model: 'm', train: true, iters: 600, learning_rate: 1e-5, lora_parameters: { keys: ['self_attn.q_proj', 'self_attn.v_proj'], rank: 8, scale: 20 }, list: ['a', 2] })
  t.throws(() => parseYaml('a: 1\n   b: 2\n', 'c.yaml'), { message: /c\.yaml:2: unexpected indentation/ })
})

test('train from flags: plain progress lines, adapter, loss.svg, metrics; then --resume continues', async (t) => {
  const out = join(tempDir(t, 'peft-node-cli-'), 'run')
  const data = dataDir(t)
  const io = capture()
  const code = await main(['train', ...BASE, '--data', data, '--steps', '4', '--output', out, '--method', 'lora', '--r', '4', '--target-modules', 'q_proj,v_proj', '--eval-every', '2'], io)
  t.is(code, 0, io.errors())
  t.regex(io.text(), /trainable params: 1,792 \|\|/)
  t.regex(io.text(), /step 1\/4 {2}loss \d+\.\d{4} {2}lr [\d.e+-]+ {2}\d+ tok\/s {2}ETA/)
  t.regex(io.text(), /eval at step 2: loss \d.*perplexity/)
  for (const f of ['adapter_model.safetensors', 'adapter_config.json', 'loss.svg', 'metrics.jsonl']) t.true(existsSync(join(out, f)), f)
  t.deepEqual(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')).target_modules, ['q_proj', 'v_proj'])
  const again = capture()
  t.is(await main(['train', ...BASE, '--data', data, '--steps', '6', '--output', out, '--resume', out], again), 0, again.errors())
  t.regex(again.text(), /^step 5\/6/m)
  t.notRegex(again.text(), /^step 1\//m)
})

test('train from a YAML config with mlx-lm keys; flags override the file', async (t) => {
  const d = tempDir(t, 'peft-node-cli-')
  const out = join(d, 'adapters')
  writeFileSync(join(d, 'c.yaml'), `model: ${MODEL_DIR}\ndata: ${dataDir(t)}\niters: 50\nbatch_size: 2\nadapter_path: ${out}\nlora_parameters:\n  keys: [self_attn.q_proj, self_attn.k_proj]\n  rank: 2\n  scale: 4.0\n  dropout: 0.0\n`)
  const io = capture(true)
  t.is(await main(['train', '-c', join(d, 'c.yaml'), '--steps', '2'], io), 0, io.errors())
  const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'))
  t.like(cfg, { r: 2, lora_alpha: 8, target_modules: ['self_attn.q_proj', 'self_attn.k_proj'] })
  t.regex(io.text(), /\r\x1b\[K\[#+-*\] step 2\/2/, 'a redrawn bar on a TTY')
})

test('methods by name: unknown ones and bad input are clear errors', async (t) => {
  const data = dataDir(t)
  const run = async (...args: string[]) => {
    const io = capture()
    const code = await main(args, io)
    return { code, err: io.errors(), text: io.text() }
  }
  t.like(await run('train', ...BASE, '--data', data, '--method', 'nope'), { code: 1 })
  t.regex((await run('train', ...BASE, '--data', data, '--method', 'nope')).err, /--method nope: unknown method; known: lora, dora/)
  t.regex((await run('train', '--data', data)).err, /--model is required/)
  t.regex((await run('train', ...BASE, '--data', data, '--batch-size', '0')).err, /batchSize: expected an integer >= 1, found 0/)
  t.regex((await run('train', ...BASE, '--data', join(data, 'none.jsonl'))).err, /none\.jsonl: no such data file/)
  t.regex((await run('merge', '--model', MODEL_DIR)).err, /--adapter is required/)
  t.regex((await run('frobnicate')).err, /unknown command "frobnicate"/)
  // Another method passes through to the native core: it trains, or says why not.
  const ia3 = await run('train', ...BASE, '--data', data, '--steps', '1', '--output', join(tempDir(t, 'peft-node-cli-'), 'ia3'), '--method', 'ia3', '--target-modules', 'k_proj,down_proj', '--feedforward-modules', 'down_proj')
  t.log(`--method ia3: ${ia3.code === 0 ? 'trained' : ia3.err.trim()}`)
  t.is(ia3.code, 0, ia3.err)
  const dora = await run('info', '--model', MODEL_DIR, '--method', 'dora', '--r', '2')
  t.regex(dora.text, /"use_dora":true/)
})

test('non-LoRA methods by name train 2 steps and save their peft_type; AdaLoRA takes total_step from --steps', async (t) => {
  const data = dataDir(t)
  const cases: [string, string, string[]][] = [
    ['ia3', 'IA3', ['--target-modules', 'k_proj,down_proj', '--feedforward-modules', 'down_proj']],
    ['prefix-tuning', 'PREFIX_TUNING', ['--num-virtual-tokens', '4']],
    ['bottleneck', 'BOTTLENECK_ADAPTER', ['--bottleneck-size', '8']],
    ['adalora', 'ADALORA', ['--init-r', '4', '--target-r', '2']],
    ['sparse', 'SPARSE_MASK', []], // density defaults to 0.01 on the command line
    ['dylora', 'DYLORA', ['--r', '4']],
    ['mam', 'MAM_ADAPTER', ['--num-virtual-tokens', '4', '--bottleneck-size', '8']],
    ['unipelt', 'UNIPELT', ['--num-virtual-tokens', '4', '--bottleneck-size', '8']],
  ]
  for (const [method, peftType, extra] of cases) {
    const out = join(tempDir(t, 'peft-node-cli-'), method)
    const io = capture()
    const code = await main(['train', ...BASE, '--data', data, '--steps', '2', '--output', out, '--method', method, ...extra], io)
    t.is(code, 0, `${method}: ${io.errors()}`)
    t.regex(io.text(), /^step 2\/2/m, method)
    const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'))
    t.is(cfg.peft_type, peftType, method)
    if (method === 'prefix-tuning') t.is(cfg.num_virtual_tokens, 4)
    if (method === 'bottleneck') t.is(cfg.bottleneck_size, 8)
    if (method === 'adalora') t.is(cfg.total_step, 2)
    t.true(existsSync(join(out, 'adapter_model.safetensors')), method)
  }
  const io = capture()
  t.is(await main(['info', '--model', MODEL_DIR, '--method', 'adalora'], io), 1)
  t.regex(io.errors(), /--method adalora: AdaLoRA needs total_step .*--total-step N/)
  const known = capture()
  await main(['train', ...BASE, '--data', data, '--method', 'oft'], known)
  t.regex(known.errors(), /--method oft: unknown method; known: .*bottleneck, parallel-adapter, ssf, bias, sparse, dylora, mam, unipelt/)
})

test('help for every command, typos in flags refused, merge of a method that cannot merge names it', async (t) => {
  const help = capture()
  t.is(await main(['train', '--help'], help), 0)
  t.regex(help.text(), /^peft-node <command> \[options\]/m)
  const data = dataDir(t)
  const typo = capture()
  t.is(await main(['train', ...BASE, '--data', data, '--stpes', '2', '--output', join(tempDir(t, 'peft-node-cli-'), 'typo')], typo), 1)
  t.regex(typo.errors(), /--stpes: not an option of `train`, and LORA has no such field \(did you mean --steps\?\)/)
  const out = join(tempDir(t, 'peft-node-cli-'), 'bn')
  t.is(await main(['train', ...BASE, '--data', data, '--steps', '1', '--output', out, '--method', 'bottleneck', '--bottleneck-size', '4'], capture()), 0)
  const merge = capture()
  t.is(await main(['merge', '--model', MODEL_DIR, '--adapter', out, '--output', join(out, 'merged')], merge), 1)
  t.regex(merge.errors(), /BOTTLENECK_ADAPTER\) cannot be merged/)
  const demo = capture()
  t.is(await main(['train', '--method', 'ia3', '--model', join(out, 'missing.gguf'), '--demo'], demo), 1)
  t.regex(demo.errors(), /The demo model is missing/)
})

test('info, eval and generate with an adapter', async (t) => {
  const out = join(tempDir(t, 'peft-node-cli-'), 'a')
  const data = dataDir(t)
  t.is(await main(['train', ...BASE, '--data', data, '--steps', '2', '--output', out, '--r', '4'], capture()), 0)
  const info = capture()
  t.is(await main(['info', '--model', MODEL_DIR, '--adapter', out], info), 0, info.errors())
  t.regex(info.text(), /trainable params: 0 \|\| all params/)
  t.regex(info.text(), /targeted modules: 4 \(q_proj, v_proj\)\n {2}model\.layers\.0\.self_attn\.q_proj/)
  const ev = capture()
  t.is(await main(['eval', '--model', MODEL_DIR, '--adapter', out, '--data', data], ev), 0, ev.errors())
  t.regex(ev.text(), /valid\.jsonl: 4 examples, \d+ target tokens: loss \d+\.\d+ {2}perplexity \d+/)
  const gen = capture()
  t.is(await main(['generate', '--model', MODEL_DIR, '--adapter', out, '--prompt', 'Say copy:', '--max-tokens', '5'], gen), 0, gen.errors())
  t.true(gen.text().length > 0)
  const merged = join(tempDir(t, 'peft-node-cli-'), 'merged')
  const mg = capture()
  t.is(await main(['merge', '--model', MODEL_DIR, '--adapter', out, '--output', merged, '--dtype', 'bfloat16'], mg), 0, mg.errors())
  t.regex(mg.text(), /model\.safetensors in bfloat16/)
  t.is(JSON.parse(readFileSync(join(merged, 'config.json'), 'utf8')).torch_dtype, 'bfloat16')
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) t.true(existsSync(join(merged, f)), f)
  const again = capture()
  t.is(await main(['generate', '--model', merged, '--prompt', 'Say copy:', '--max-tokens', '5'], again), 0, again.errors())
  t.true(again.text().length > 0, 'the merged checkpoint loads and generates')
})

test('the bin prints warnings as plain lines before it exits', async (t) => {
  const bin = join(__dirname, '..', 'dist', 'cli', 'main.js')
  const dir = tempDir(t)
  // An unknown field in a --method-config file is kept with a warning (a flag would be refused as a typo).
  writeFileSync(join(dir, 'method.json'), JSON.stringify({ r: 2, frobnicate: 1 }))
  const r = spawnSync(process.execPath, [bin, 'info', '--model', MODEL_DIR, '--method-config', join(dir, 'method.json')], { encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  t.regex(r.stderr, /^warning: unknown LoraConfig field `frobnicate` \(kept and written back, not used\)$/m)
  // Loading an adapter warns through process warnings, which used to be lost at exit.
  const peft = await tinyLora()
  await peft.savePretrained(join(dir, 'adapter'))
  peft.dispose()
  const cfg = join(dir, 'adapter', 'adapter_config.json')
  writeFileSync(cfg, JSON.stringify({ ...JSON.parse(readFileSync(cfg, 'utf8')), frobnicate: 1 }))
  const loaded = spawnSync(process.execPath, [bin, 'info', '--model', MODEL_DIR, '--adapter', join(dir, 'adapter')], { encoding: 'utf8' })
  t.is(loaded.status, 0, loaded.stderr)
  t.regex(loaded.stderr, /^warning: unknown LoraConfig field `frobnicate`/m)
  for (const out of [r.stderr, loaded.stderr]) t.notRegex(out, /\(node:\d+\)|--trace-warnings/)
})
