// The TypeScript in README.md and docs/*.md compiles against the API in src/ (the training
// guide's example once used a `signal` it never declared). Each ```ts block is type-checked as
// an ES module with top-level await; API names it uses without importing them are imported for
// it, and the reader's own data and objects that a section continues from are declared below.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import ts from 'typescript'
import * as api from '../src'
import { tempDir } from './helpers/temp'

const ROOT = join(__dirname, '..')

/**
 * What a snippet may use without defining: the reader's inputs (prompts, rows, batches,
 * examples) and the objects earlier lines of the same page made. Nothing else: an undeclared
 * name (like the guide's `signal`) is a compile error.
 */
const PRELUDE = `import type { LlamaModel, PeftModel, AdamW } from 'peft-node'
declare global {
  const model: LlamaModel
  const peft: PeftModel
  const opt: AdamW
  const step: number
  const batch: { inputIds: number[][]; attentionMask?: number[][]; labels?: number[][] }
  const batches: { inputIds: number[][]; labels: number[][] }[]
  const rows: number[][]
  const attentionMask: number[][]
  const p1: number[], p2: number[], p3: number[]
  const examples: { inputIds: number[]; labels: number[] }[]
}
export {}
`

function snippets(): { file: string; line: number; code: string }[] {
  const files = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => join('docs', f))]
  const out: { file: string; line: number; code: string }[] = []
  for (const f of files) {
    const text = readFileSync(join(ROOT, f), 'utf8')
    for (const m of text.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
      out.push({ file: f, line: text.slice(0, m.index).split('\n').length + 1, code: m[1] }) // line: the snippet's first
    }
  }
  return out
}

/** The snippet, with `import { … } from 'peft-node'` for API names it uses but does not import (a line above it). */
function asModule(code: string): { text: string; added: number } {
  const imported = new Set([...code.matchAll(/import\s*\{([^}]*)\}\s*from\s*'peft-node'/g)].flatMap((m) => m[1].split(',').map((s) => s.trim())))
  const used = Object.keys(api).filter((n) => !imported.has(n) && new RegExp(`\\b${n}\\b`).test(code))
  const head = used.length ? `import { ${used.join(', ')} } from 'peft-node'\n` : ''
  return { text: head + code + '\nexport {}\n', added: head ? 1 : 0 }
}

test('every TypeScript snippet in README.md and docs/ compiles', (t) => {
  const dir = tempDir(t)
  const found = snippets()
  t.true(found.length >= 10, `found ${found.length} snippets`)
  writeFileSync(join(dir, 'prelude.ts'), PRELUDE)
  const modules = found.map((s) => asModule(s.code))
  const files = modules.map((m, i) => {
    const file = join(dir, `snippet-${i}.ts`)
    writeFileSync(file, m.text)
    return file
  })
  const program = ts.createProgram([join(dir, 'prelude.ts'), ...files], {
    strict: true, noEmit: true, skipLibCheck: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler, types: ['node'], typeRoots: [join(ROOT, 'node_modules', '@types')],
    resolveJsonModule: true, esModuleInterop: true, paths: { 'peft-node': [join(ROOT, 'src', 'index.ts')] },
  })
  const problems = ts.getPreEmitDiagnostics(program).map((d) => {
    const msg = ts.flattenDiagnosticMessageText(d.messageText, '\n')
    const i = d.file ? files.indexOf(d.file.fileName) : -1
    if (i < 0) return `${d.file?.fileName ?? '?'}: ${msg}`
    const line = found[i].line + d.file!.getLineAndCharacterOfPosition(d.start ?? 0).line - modules[i].added
    return `${found[i].file}:${line}: ${msg}`
  })
  t.deepEqual(problems, [])
})

test('docs/releasing.md states the root package size npm pack measures (within 25%)', (t) => {
  // --ignore-scripts: measure dist/ as built (prepack would delete it under the other specs' feet).
  const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  const packed = JSON.parse(r.stdout.slice(r.stdout.indexOf('[')))[0] as { size: number; unpackedSize: number; entryCount: number }
  t.true(packed.entryCount > 50, `dist/ looks unbuilt (${packed.entryCount} files): run npm run build:ts`)
  const doc = readFileSync(join(ROOT, 'docs', 'releasing.md'), 'utf8')
  const m = /root package is small \(about ([\d.]+) kB packed, ([\d.]+) kB unpacked, (\d+) files/.exec(doc)
  t.truthy(m, 'the sentence with the sizes')
  const near = (stated: number, real: number, what: string) => t.true(Math.abs(stated - real) <= 0.25 * real, `${what}: the doc says ${stated}, npm pack says ${real}`)
  near(Number(m![1]) * 1000, packed.size, 'packed bytes')
  near(Number(m![2]) * 1000, packed.unpackedSize, 'unpacked bytes')
  near(Number(m![3]), packed.entryCount, 'files')
})

test("README's install from a local build: npm install <checkout> gives require, import and the bin", (t) => {
  const app = tempDir(t)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'my-app', version: '1.0.0', private: true }))
  const env = { ...process.env, npm_config_registry: 'http://127.0.0.1:9/', npm_config_cache: join(app, '.npm') } // offline: nothing is fetched
  const install = spawnSync('npm', ['install', '--offline', '--no-audit', '--no-fund', ROOT], { cwd: app, env, encoding: 'utf8' })
  t.is(install.status, 0, install.stderr)
  const cjs = spawnSync(process.execPath, ['-e', "console.log(typeof require('peft-node').LlamaModel)"], { cwd: app, encoding: 'utf8' })
  t.is(cjs.stdout.trim(), 'function', cjs.stderr)
  const esm = spawnSync(process.execPath, ['--input-type=module', '-e', "import { Tokenizer } from 'peft-node'; console.log(typeof Tokenizer)"], { cwd: app, encoding: 'utf8' })
  t.is(esm.stdout.trim(), 'function', esm.stderr)
  const bin = spawnSync(join(app, 'node_modules', '.bin', 'peft-node'), ['help'], { cwd: app, encoding: 'utf8' })
  t.regex(bin.stdout, /^peft-node <command> \[options\]/, bin.stderr)
})
