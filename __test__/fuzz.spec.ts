// Fuzzing the TypeScript parsers of a user's files: the training config (YAML/JSON, as the
// CLI reads it) and the JSONL data pipeline (text, completions, chat through the chat
// template), for PEFT_FUZZ_SECS each (default 20; 600 by hand). Every rejection must be an
// Error that names the file; nothing may throw a non-Error or run longer than 5 s.
// The Rust parsers have their own fuzzers (crates/peft-core/tests/fuzz.rs).
import test from 'ava'
import { copyFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { normalise, readConfigFile, trainOptions } from '../src/cli/config'
import { loadData } from '../src/data'
import { Tokenizer } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const SEEDS = join(__dirname, 'data', 'fuzz')
const BUDGET_MS = Number(process.env.PEFT_FUZZ_SECS ?? 20) * 1000
const TOKENS = ['null', 'true', '[]', '{}', '""', '-1', '1e308', '4294967296', '"\\u0000"', '[[[[[[', '{{{', ': ', '- ', '  ', '\n', '#', '"', "'", '&a', '*a', '!!', '|', '>', '\t', '"role": ', '"content": ', '"messages": ']

/** A seeded xorshift, so a failing run can be replayed with the same PEFT_FUZZ_SEED. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1
  return (n) => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    return (s >>> 0) % Math.max(1, n)
  }
}

function mutate(text: string, below: (n: number) => number): string {
  let s = text
  for (let k = 0; k <= below(4); k++) {
    const at = below(s.length + 1)
    switch (below(6)) {
      case 0: s = s.slice(0, at) + String.fromCharCode(below(128)) + s.slice(at + 1); break
      case 1: s = s.slice(0, at) + s.slice(at + 1 + below(16)); break
      case 2: s = s.slice(0, at) + TOKENS[below(TOKENS.length)] + s.slice(at); break
      case 3: { const from = below(s.length); s = s.slice(0, at) + s.slice(from, from + below(40)) + s.slice(at); break }
      case 4: s = s.replace(/\d+(\.\d+)?(e-?\d+)?/, ['0', '-1', '1e308', '4294967296', '1.5', 'NaN'][below(6)]); break
      default: s = s.slice(0, below(s.length + 1))
    }
  }
  return s
}

/** Runs `run` over mutations of the seeds until the budget is spent; returns inputs run. */
async function fuzz(name: string, seeds: string[], file: string, run: (file: string) => Promise<unknown> | unknown): Promise<{ runs: number; accepted: number }> {
  const below = rng(Number(process.env.PEFT_FUZZ_SEED ?? 0x5eed) ^ name.length)
  for (const s of seeds) {
    writeFileSync(file, s)
    await run(file) // the seeds must be accepted, or the target tests nothing
  }
  const corpus = [...seeds]
  const kinds = new Set<string>()
  const end = Date.now() + BUDGET_MS
  let runs = 0
  let accepted = 0
  while (Date.now() < end) {
    const input = mutate(corpus[below(corpus.length)], below)
    writeFileSync(file, input)
    const start = Date.now()
    try {
      await run(file)
      accepted++
    } catch (e) {
      if (!(e instanceof Error)) throw new Error(`${name}: threw a non-Error (${String(e)}) on ${JSON.stringify(input)}`)
      if (!e.message.includes(file)) throw new Error(`${name}: the error does not name the file: ${e.message}\ninput: ${JSON.stringify(input)}`)
      const kind = e.message.replace(file, '').replace(/[0-9]+/g, '').slice(0, 60)
      if (!kinds.has(kind) && corpus.length < 256) {
        kinds.add(kind)
        corpus.push(input)
      }
    }
    if (Date.now() - start > 5000) throw new Error(`${name}: one input took ${Date.now() - start} ms: ${JSON.stringify(input)}`)
    runs++
  }
  return { runs, accepted }
}

test('fuzz: training configs (YAML and JSON) give Errors naming the file', async (t) => {
  const dir = tempDir(t)
  const seeds = readdirSync(SEEDS).filter((f) => f.endsWith('.yaml')).map((f) => readFileSync(join(SEEDS, f), 'utf8'))
  const read = (file: string) => trainOptions(normalise(readConfigFile(file)))
  const yaml = await fuzz('yaml', seeds, join(dir, 'config.yaml'), read)
  const json = await fuzz('json', seeds.map((s) => JSON.stringify(normalise(readConfigFile(writeTo(join(dir, 's.yaml'), s))))), join(dir, 'config.json'), read)
  t.log(`yaml: ${yaml.runs} inputs, ${yaml.accepted} accepted; json: ${json.runs} inputs, ${json.accepted} accepted`)
  t.true(yaml.runs > 0 && json.runs > 0)
})

function writeTo(file: string, text: string): string {
  writeFileSync(file, text)
  return file
}

test('fuzz: JSONL data (text, completions, chat) gives Errors naming the file', async (t) => {
  const dir = tempDir(t)
  // The fixture's tokenizer with a ChatML template, so chat records render.
  const tokDir = join(dir, 'tok')
  mkdirSync(tokDir)
  copyFileSync(join(MODEL_DIR, 'tokenizer.json'), join(tokDir, 'tokenizer.json'))
  const chatml = readFileSync(join(__dirname, '..', 'crates', 'peft-core', 'tests', 'fuzz', 'corpus', 'chatml.jinja'), 'utf8')
  const config = { ...JSON.parse(readFileSync(join(MODEL_DIR, 'tokenizer_config.json'), 'utf8')), chat_template: chatml }
  writeFileSync(join(tokDir, 'tokenizer_config.json'), JSON.stringify(config))
  const tokenizer = await Tokenizer.fromFile(join(tokDir, 'tokenizer.json'))
  const seeds = readdirSync(SEEDS).filter((f) => f.endsWith('.jsonl')).map((f) => readFileSync(join(SEEDS, f), 'utf8'))
  const r = await fuzz('jsonl', seeds, join(dir, 'train.jsonl'), (file) => loadData(file, tokenizer, { maxSeqLength: 1024 }))
  t.log(`jsonl: ${r.runs} inputs, ${r.accepted} accepted`)
  t.true(r.runs > 0)
})
