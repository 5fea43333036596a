// Config files (`-c`, `--method-config`; YAML subset in src/cli/yaml.ts): nesting is bounded, so a
// hostile or broken file is an error naming the file (and line), never a stack overflow.
import test from 'ava'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { main } from '../src/cli/main'
import { MAX_YAML_DEPTH, parseYaml } from '../src/cli/yaml'
import { capture } from './helpers/cli'
import { tempDir } from './helpers/temp'

test('flow collections nested 100,000 deep: an error naming the file and line, not a stack overflow', (t) => {
  const deep = `model: m\nlora_parameters: ${'['.repeat(100_000)}1${']'.repeat(100_000)}\n`
  t.throws(() => parseYaml(deep, 'deep.yaml'), { message: new RegExp(`^deep\\.yaml:2: nested deeper than ${MAX_YAML_DEPTH} levels`) })
  const maps = `a: ${'{b: '.repeat(100_000)}1${'}'.repeat(100_000)}\n`
  t.throws(() => parseYaml(maps, 'maps.yaml'), { message: /^maps\.yaml:1: nested deeper than/ })
})

test('a stray quote in a double-quoted scalar: an error naming the file and line (found by fuzz.spec.ts)', (t) => {
  const text = 'model: m\nlora_parameters:\n  keys: ["self_attn.q_pr"j", "v"]\n'
  t.throws(() => parseYaml(text, 'quote.yaml'), { message: /^quote\.yaml:3: malformed double-quoted string/ })
  t.deepEqual(parseYaml('k: ["a b", "c"]\n', 'ok.yaml'), { k: ['a b', 'c'] })
})

test('block maps nested deeper than the bound: an error naming the file and the line', (t) => {
  const lines = Array.from({ length: MAX_YAML_DEPTH + 5 }, (_, i) => `${' '.repeat(i)}k${i}:`).join('\n') + ' 1\n'
  t.throws(() => parseYaml(lines, 'indent.yaml'), { message: new RegExp(`^indent\\.yaml:${MAX_YAML_DEPTH + 1}: nested deeper than ${MAX_YAML_DEPTH} levels`) })
})

test('nesting up to the bound still parses', (t) => {
  const n = MAX_YAML_DEPTH - 1 // the top-level map is one level
  const v = parseYaml(`a: ${'['.repeat(n)}1${']'.repeat(n)}\n`, 'ok.yaml') as { a: unknown }
  let x: unknown = v.a
  let depth = 0
  while (Array.isArray(x)) {
    x = x[0]
    depth++
  }
  t.is(depth, n)
  t.is(x, 1)
})

test('peft-node train -c with a 100,000-deep config: exit 1, the error names the file', async (t) => {
  const file = join(tempDir(t), 'deep.yaml')
  writeFileSync(file, `iters: 2\nlora_parameters: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`)
  const io = capture()
  t.is(await main(['train', '-c', file], io), 1)
  t.regex(io.errors(), new RegExp(`^peft-node train: ${esc(file)}:2: nested deeper than`, 'm'))
  t.notRegex(io.errors(), /call stack/)
})

test('a JSON config or --method-config nested 100,000 deep, or malformed: errors naming the file', async (t) => {
  const dir = tempDir(t)
  const deep = join(dir, 'deep.json')
  writeFileSync(deep, `{"iters": 2, "lora_parameters": ${'['.repeat(100_000)}${']'.repeat(100_000)}}`)
  const io = capture()
  t.is(await main(['info', '-c', deep, '--model', 'unused'], io), 1)
  t.regex(io.errors(), new RegExp(`^peft-node info: ${esc(deep)}: nested deeper than ${MAX_YAML_DEPTH} levels`, 'm'))
  const method = capture()
  t.is(await main(['info', '--model', 'unused', '--method-config', deep], method), 1)
  t.regex(method.errors(), new RegExp(`^peft-node info: --method-config ${esc(deep)}: nested deeper than`, 'm'))
  const broken = join(dir, 'broken.json')
  writeFileSync(broken, '{"r": 8,')
  const bad = capture()
  t.is(await main(['info', '--model', 'unused', '--method-config', broken], bad), 1)
  t.regex(bad.errors(), new RegExp(`^peft-node info: --method-config ${esc(broken)}: malformed JSON`, 'm'))
})

function esc(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')
}
