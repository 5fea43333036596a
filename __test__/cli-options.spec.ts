// Every command takes options the same way: unknown or misspelled flags and stray arguments are
// refused before any work, with one error line `peft-node <command>: ...`; `info` takes the
// model as its argument; `eval` reads a folder's valid.jsonl; `merge` does not overwrite.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { main } from '../src/cli/main'
import { MODEL_DIR } from './helpers/fixtures'
import { capture } from './helpers/cli'
import { tempDir } from './helpers/temp'
import { completions, tinyLora, writeJsonl } from './helpers/train-data'

const BIN = join(__dirname, '..', 'dist', 'cli', 'main.js')

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = capture()
  const code = await main(args, io)
  return { code, out: io.text(), err: io.errors() }
}

function dataDir(t: Parameters<typeof tempDir>[0], files: string[] = ['train.jsonl', 'valid.jsonl']): string {
  const d = tempDir(t)
  for (const f of files) writeJsonl(join(d, f), completions(4))
  return d
}

async function savedAdapter(t: Parameters<typeof tempDir>[0]): Promise<string> {
  const dir = join(tempDir(t), 'adapter')
  const peft = await tinyLora()
  await peft.savePretrained(dir)
  peft.dispose()
  return dir
}

test('generate refuses a misspelled option (--max-token) instead of generating 256 tokens', async (t) => {
  const r = await run('generate', '--model', MODEL_DIR, '--prompt', 'hi', '--max-token', '5')
  t.is(r.code, 1)
  t.is(r.err, 'peft-node generate: --max-token: not an option of `generate` (did you mean --max-tokens?); run `peft-node help`\n')
  t.is(r.out, '', 'nothing was generated')
})

test('every command refuses an unknown option the same way', async (t) => {
  const adapter = await savedAdapter(t)
  const data = dataDir(t)
  const commands: [string, string[]][] = [
    ['train', ['--model', MODEL_DIR, '--data', data, '--steps', '1', '--output', join(tempDir(t), 'o')]],
    ['generate', ['--model', MODEL_DIR, '--prompt', 'hi']],
    ['chat', ['--model', MODEL_DIR]],
    ['eval', ['--model', MODEL_DIR, '--data', data]],
    ['info', ['--model', MODEL_DIR]],
    ['info', ['--model', MODEL_DIR, '--adapter', adapter]],
    ['merge', ['--model', MODEL_DIR, '--adapter', adapter, '--output', join(tempDir(t), 'm')]],
  ]
  for (const [command, args] of commands) {
    const r = await run(command, ...args, '--frobnicate', '1')
    t.is(r.code, 1, `${command} ${args.join(' ')}`)
    t.regex(r.err, new RegExp(`^peft-node ${command}: --frobnicate: not an option of \`${command}\``), command)
  }
  // train and info (with a method) take the method's fields as options: a typo there is named with the method.
  t.regex((await run('info', '--model', MODEL_DIR, '--method', 'ia3', '--r', '4')).err, /^peft-node info: --r: not an option of `info`, and IA3 has no such field/)
})

test('stray arguments are refused; info takes the model as its argument', async (t) => {
  t.regex((await run('eval', 'data.jsonl', '--model', MODEL_DIR)).err, /^peft-node eval: unexpected argument "data\.jsonl" \(`eval` takes options only: --model, --adapter, --config, --data, /)
  t.regex((await run('train', 'data/')).err, /^peft-node train: unexpected argument "data\/" \(`train` takes options only: run `peft-node help`\)/, 'not the demo')
  const info = await run('info', MODEL_DIR, '--method', 'lora', '--r', '2')
  t.is(info.code, 0, info.err)
  t.regex(info.out, new RegExp(`^model: ${MODEL_DIR.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} \\(2 layers`, 'm'))
  t.regex((await run('info', MODEL_DIR, '--model', MODEL_DIR)).err, /^peft-node info: give the model once: as the argument or as --model/)
  t.regex((await run('info', MODEL_DIR, 'extra')).err, /^peft-node info: unexpected argument "extra"/)
})

test('errors carry the command once: no "peft-node generate: generate:"', async (t) => {
  const r = await run('generate', '--model', MODEL_DIR)
  t.is(r.err, 'peft-node generate: give a prompt (--prompt "..." or as an argument)\n')
})

test('eval takes a folder with only valid.jsonl, as its message says', async (t) => {
  const r = await run('eval', '--model', MODEL_DIR, '--data', dataDir(t, ['valid.jsonl']))
  t.is(r.code, 0, r.err)
  t.regex(r.out, /valid\.jsonl: 4 examples/)
  const train = await run('eval', '--model', MODEL_DIR, '--data', dataDir(t, ['train.jsonl']))
  t.regex(train.out, /train\.jsonl: 4 examples/, 'no valid.jsonl: train.jsonl')
  const none = dataDir(t, [])
  t.regex((await run('eval', '--model', MODEL_DIR, '--data', none)).err, /: a data folder for eval needs a valid\.jsonl or a train\.jsonl/)
})

test('a refused train typo is the last word: no warning about the same field after it', (t) => {
  const r = spawnSync(process.execPath, [BIN, 'train', '--model', MODEL_DIR, '--data', dataDir(t), '--stpes', '2', '--output', join(tempDir(t), 'o')], { encoding: 'utf8' })
  t.is(r.status, 1)
  t.is(r.stderr, 'peft-node train: --stpes: not an option of `train`, and LORA has no such field (did you mean --steps?); run `peft-node help`\n')
})

test('merge refuses to overwrite an existing output folder unless --force', async (t) => {
  const adapter = await savedAdapter(t)
  const out = join(tempDir(t), 'merged')
  const args = ['merge', '--model', MODEL_DIR, '--adapter', adapter, '--output', out]
  t.is((await run(...args)).code, 0)
  const weights = join(out, 'model.safetensors')
  const before = statSync(weights).mtimeMs
  writeFileSync(join(out, 'NOTES.md'), 'mine')
  const again = await run(...args)
  t.is(again.code, 1)
  t.is(again.err, `peft-node merge: --output ${out}: already exists and is not empty; pass --force to write into it (files of the same name are replaced)\n`)
  t.is(statSync(weights).mtimeMs, before, 'untouched')
  const forced = await run(...args, '--force')
  t.is(forced.code, 0, forced.err)
  t.true(statSync(weights).mtimeMs >= before)
  t.is(readFileSync(join(out, 'NOTES.md'), 'utf8'), 'mine', '--force replaces files, it does not empty the folder')
  const file = join(tempDir(t), 'a-file')
  writeFileSync(file, '')
  t.regex((await run('merge', '--model', MODEL_DIR, '--adapter', adapter, '--output', file, '--force')).err, /--output .*a-file: is a file, not a folder/)
  const empty = join(tempDir(t), 'empty')
  mkdirSync(empty)
  t.is((await run('merge', '--model', MODEL_DIR, '--adapter', adapter, '--output', empty)).code, 0, 'an empty folder is fine')
  t.true(existsSync(join(empty, 'config.json')))
})
