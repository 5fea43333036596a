// Our GGUF reader against GGUFs that llama.cpp's own converter wrote (scripts/make-tiny-ggufs.sh:
// convert_hf_to_gguf.py of llama.cpp 0c1e570 from the shared tiny fixtures, f32, and qwen2 also
// q8_0). Per architecture:
//   1. AutoModelForCausalLM.fromPretrained(<gguf>) gives the logits of fromPretrained(<fixture
//      model dir>) within 1e-4: same f32 weights, so this checks the tensor names, llama.cpp's Q/K
//      permutation, Gemma's norm + 1, the fused Phi-3 tensors and the config read from metadata.
//      Where the converter drops what transformers runs (Mistral's sliding window; Gemma 3's
//      layer_types, which llama.cpp replaces by its fixed pattern of 6 local layers), the
//      safetensors side gets a copy of the config saying what the GGUF says, and the unmodified
//      fixture is compared only on the positions the dropped setting cannot reach.
//   2. llama.cpp (node-llama-cpp, prebuilt CPU binary) on the same file: its teacher-forced argmax
//      against transformers' (base/expected.safetensors) and against ours from the GGUF.
import test, { ExecutionContext } from 'ava'
import { existsSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { AutoModelForCausalLM } from '../src'
import { readSafetensors } from './helpers/fixtures'
import { tempDir } from './helpers/temp'
import { llamaCppArgmax } from './helpers/llamacpp'

const SHARED = join(__dirname, '..', '..', 'shared', 'fixtures')
const DATA = join(__dirname, 'data', 'tiny-gguf')

interface Arch {
  name: string
  fixture: string
  gguf: string
  /** Max |ours from GGUF - ours from safetensors| allowed. */
  tol: number
  /** The config the GGUF amounts to, when the converter drops part of the fixture's. */
  asGguf?: (config: Record<string, unknown>) => Record<string, unknown>
  /** Positions (within a row) that the dropped setting cannot reach: there the unmodified fixture must match too. */
  unaffected?: number
}

const ARCHS: Arch[] = [
  { name: 'qwen2', fixture: join(SHARED, 'hf-peft-tiny-arch', 'qwen2'), gguf: join(DATA, 'qwen2.f32.gguf'), tol: 1e-4 },
  // Q8_0 weights: the difference is the quantisation error, not a reading error.
  { name: 'qwen2 q8_0', fixture: join(SHARED, 'hf-peft-tiny-arch', 'qwen2'), gguf: join(DATA, 'qwen2.q8_0.gguf'), tol: 2e-2 },
  { name: 'qwen3', fixture: join(SHARED, 'hf-peft-tiny-arch', 'qwen3'), gguf: join(DATA, 'qwen3.f32.gguf'), tol: 1e-4 },
  // Written as general.architecture = llama with no sliding window: full attention. The window
  // (12) only cuts keys from position 12 on.
  {
    name: 'mistral',
    fixture: join(SHARED, 'hf-peft-tiny-arch', 'mistral'),
    gguf: join(DATA, 'mistral.f32.gguf'),
    tol: 1e-4,
    asGguf: (c) => ({ ...c, sliding_window: null }),
    unaffected: 12,
  },
  { name: 'phi3', fixture: join(SHARED, 'hf-peft-tiny-arch', 'phi3'), gguf: join(DATA, 'phi3.f32.gguf'), tol: 1e-4 },
  // No layer_types in the GGUF: llama.cpp's gemma3 makes layers 0-4 of every 6 local (window 12,
  // RoPE base 10000), so the fixture's global layer 1 (base 1e6) is local there. RoPE at position
  // 0 is the identity and one key fits any window: only position 0 is unaffected.
  {
    name: 'gemma3',
    fixture: join(SHARED, 'hf-peft-tiny-arch', 'gemma3'),
    gguf: join(DATA, 'gemma3.f32.gguf'),
    tol: 1e-4,
    asGguf: (c) => ({ ...c, layer_types: (c.layer_types as string[]).map(() => 'sliding_attention') }),
    unaffected: 1,
  },
]
// LLaMA's GGUF (551 KB) is not committed: `bash scripts/make-tiny-ggufs.sh` writes it to .cache/.
const LLAMA_GGUF = join(__dirname, '..', '.cache', 'tiny-gguf', 'llama.f32.gguf')
const llama: Arch = { name: 'llama', fixture: join(SHARED, 'hf-peft-tiny-llama'), gguf: LLAMA_GGUF, tol: 1e-4 }

interface Rows {
  /** The unpadded rows of inputs.json. */
  rows: number[][]
  /** transformers' argmax per row and position. */
  hf: number[][]
}

function fixtureRows(fixture: string): Rows {
  const inp = JSON.parse(readFileSync(join(fixture, 'inputs.json'), 'utf8')) as { input_ids: number[][]; attention_mask: number[][] }
  const rows = inp.input_ids.map((r, i) => r.filter((_, j) => inp.attention_mask[i][j] === 1))
  const logits = readSafetensors(join(fixture, 'base', 'expected.safetensors')).get('logits')!
  const [, t, v] = logits.shape
  const hf = rows.map((r, i) => r.map((_, j) => argmax(logits.data, (i * t + j) * v, v)))
  return { rows, hf }
}

/** The fixture's model folder with config.json replaced (the other files linked). */
function modelWithConfig(t: ExecutionContext, fixture: string, edit: (c: Record<string, unknown>) => Record<string, unknown>): string {
  const src = join(fixture, 'model')
  const dir = tempDir(t, 'peft-node-gguf-arch-')
  for (const f of readdirSync(src).filter((f) => !f.startsWith('config'))) symlinkSync(join(src, f), join(dir, f))
  const config = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>
  writeFileSync(join(dir, 'config.json'), JSON.stringify(edit(config), null, 2))
  return dir
}

/** Logits per row ([len * vocab]) from a fresh model; disposed after. */
async function rowLogits(path: string, rows: number[][]): Promise<{ logits: Float32Array[]; vocab: number; modelType: string }> {
  const m = await AutoModelForCausalLM.fromPretrained(path)
  try {
    const logits: Float32Array[] = []
    let vocab = 0
    for (const row of rows) {
      const out = await m.forward({ inputIds: [row] })
      vocab = out.logits.shape[2]
      logits.push(await out.logits.toFloat32Array())
      out.logits.dispose()
    }
    return { logits, vocab, modelType: m.config.modelType }
  } finally {
    m.dispose()
  }
}

/** max |a - b| over rows, on positions [from, to). */
function maxDiff(a: Float32Array[], b: Float32Array[], vocab: number, from = 0, to = Infinity): number {
  let m = 0
  a.forEach((x, i) => {
    const end = Math.min(to, x.length / vocab) * vocab
    for (let k = from * vocab; k < end; k++) m = Math.max(m, Math.abs(x[k] - b[i][k]))
  })
  return m
}

function agreement(a: number[][], b: number[][], positions = Infinity): { agree: number; total: number; misses: string } {
  let agree = 0
  let total = 0
  const misses: string[] = []
  a.forEach((row, i) =>
    row.forEach((x, j) => {
      if (j >= positions) return
      total++
      if (x === b[i][j]) agree++
      else misses.push(`${i}@${j}`)
    }),
  )
  return { agree, total, misses: misses.join(' ') }
}

function argmax(xs: ArrayLike<number>, off: number, n: number): number {
  let best = 0
  for (let k = 1; k < n; k++) if (xs[off + k] > xs[off + best]) best = k
  return best
}

function checks(arch: Arch) {
  test.serial(`${arch.name}: ours from llama.cpp's GGUF = ours from the safetensors`, async (t) => {
    const { rows } = fixtureRows(arch.fixture)
    const gguf = await rowLogits(arch.gguf, rows)
    const st = await rowLogits(join(arch.fixture, 'model'), rows)
    t.is(gguf.vocab, st.vocab)
    if (arch.asGguf) {
      const same = await rowLogits(modelWithConfig(t, arch.fixture, arch.asGguf), rows)
      const d = maxDiff(gguf.logits, same.logits, gguf.vocab)
      t.log(`max |GGUF - safetensors with the GGUF's config| = ${d.toExponential(2)} (${gguf.modelType} vs ${same.modelType})`)
      t.true(d <= arch.tol, `${d} > ${arch.tol}`)
      const before = maxDiff(gguf.logits, st.logits, gguf.vocab, 0, arch.unaffected)
      const after = maxDiff(gguf.logits, st.logits, gguf.vocab, arch.unaffected)
      t.log(`against the fixture's own config: ${before.toExponential(2)} before position ${arch.unaffected}, ${after.toExponential(2)} from it on (what the GGUF does not carry)`)
      t.true(before <= arch.tol, `${before} > ${arch.tol} before position ${arch.unaffected}`)
    } else {
      const d = maxDiff(gguf.logits, st.logits, gguf.vocab)
      t.log(`max |GGUF - safetensors| = ${d.toExponential(2)} (${gguf.modelType})`)
      t.true(d <= arch.tol, `${d} > ${arch.tol}`)
    }
  })

  test.serial(`${arch.name}: llama.cpp's argmax on the GGUF agrees with transformers and with ours`, async (t) => {
    const { rows, hf } = fixtureRows(arch.fixture)
    const cpp = await llamaCppArgmax(arch.gguf, rows, { contextSize: 64 })
    const ours = (await rowLogits(arch.gguf, rows)).logits.map((x, i) => rows[i].map((_, j) => argmax(x, j * (x.length / rows[i].length), x.length / rows[i].length)))
    const withOurs = agreement(cpp, ours)
    t.log(`llama.cpp vs ours (GGUF): ${withOurs.agree}/${withOurs.total}${withOurs.misses ? `, misses ${withOurs.misses}` : ''}`)
    t.true(withOurs.agree / withOurs.total >= 0.95)
    const all = agreement(cpp, hf)
    t.log(`llama.cpp vs transformers: ${all.agree}/${all.total}${all.misses ? `, misses (row@position) ${all.misses}` : ''}`)
    const n = arch.unaffected
    if (n === undefined) {
      t.true(all.agree / all.total >= 0.95)
    } else {
      // Only where the dropped setting cannot reach do the two compute the same thing.
      const early = agreement(cpp, hf, n)
      t.log(`llama.cpp vs transformers before position ${n}: ${early.agree}/${early.total}`)
      t.is(early.agree, early.total)
    }
  })
}

for (const arch of ARCHS) checks(arch)
// LLaMA's GGUF is covered in CI by SmolLM2 against llama.cpp (llamacpp.spec.ts); its tiny file
// is not committed (size), so it runs only where `bash scripts/make-tiny-ggufs.sh` made it.
if (existsSync(LLAMA_GGUF)) checks(llama)
