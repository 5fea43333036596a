// Mixed-batch inference (PEFT's `adapter_names`): each row of one forward or one generation
// runs its own adapter and equals that row run alone with only its adapter active.
import test from 'ava'
import { join } from 'node:path'
import { LlamaModel, PeftModel } from '../src'
import { FIXTURES, MODEL_DIR, inputs } from './helpers/fixtures'

const ROWS = ['a', 'b', '__base__', 'ia3']

/** LoRA r 4 on q/v (`a`), rsLoRA r 8 on every linear (`b`), IA³ (`ia3`); only `a` active. */
async function threeAdapters(): Promise<PeftModel> {
  const peft = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), join(FIXTURES, 'cases', 'lora_qv'), { adapterName: 'a' })
  await peft.loadAdapter(join(FIXTURES, 'cases', 'lora_all_rslora'), 'b')
  await peft.loadAdapter(join(FIXTURES, 'cases', 'ia3'), 'ia3')
  return peft
}

function fourRows(): { inputIds: number[][]; attentionMask: number[][] } {
  const inp = inputs()
  return {
    inputIds: [...inp.input_ids, [...inp.input_ids[0]].reverse(), [...inp.input_ids[1].slice(0, 9), ...inp.input_ids[0].slice(0, 7)]],
    attentionMask: [...inp.attention_mask, Array(16).fill(1), Array(16).fill(1)],
  }
}

/** `fn` with only `name` running (adapters disabled for "__base__"). */
async function alone<T>(peft: PeftModel, name: string, fn: () => Promise<T>): Promise<T> {
  if (name === '__base__') return peft.withAdaptersDisabled(fn)
  const before = peft.activeAdapters
  peft.setAdapter(name)
  try {
    return await fn()
  } finally {
    peft.setAdapter(before)
  }
}

test('each row of a forward runs its own adapter, as that row alone', async (t) => {
  const peft = await threeAdapters()
  const batch = fourRows()
  const mixed = await (await peft.forward({ ...batch, adapterNames: ROWS })).logits.toFloat32Array()
  const vocab = peft.config.vocab_size
  const rowLen = 16 * vocab
  let worst = 0
  for (const [r, name] of ROWS.entries()) {
    const one = { inputIds: [batch.inputIds[r]], attentionMask: [batch.attentionMask[r]] }
    const want = await alone(peft, name, async () => (await peft.forward(one)).logits.toFloat32Array())
    const base = await peft.withAdaptersDisabled(async () => (await peft.forward(one)).logits.toFloat32Array())
    let d = 0
    let fromBase = 0
    for (let i = 0; i < rowLen; i++) {
      if (batch.attentionMask[r][Math.floor(i / vocab)] === 0) continue
      d = Math.max(d, Math.abs(mixed[r * rowLen + i] - want[i]))
      fromBase = Math.max(fromBase, Math.abs(mixed[r * rowLen + i] - base[i]))
    }
    t.true(d <= 1e-5, `row ${r} (${name}): ${d}`)
    if (name !== '__base__') t.true(fromBase > 1e-3, `row ${r}: adapter ${name} changes the output`)
    worst = Math.max(worst, d)
  }
  t.log(`max |mixed - alone| = ${worst}`)
  peft.dispose()
})

test('greedy generation over prompts of different lengths: each row as with its adapter alone', async (t) => {
  const peft = await threeAdapters()
  const ids = inputs().input_ids
  const prompts = [ids[0].slice(0, 10), ids[1].slice(0, 6), ids[0].slice(4, 12), ids[1].slice(0, 9)]
  const opts = { maxNewTokens: 8, stopTokenIds: [] }
  const mixed = await peft.generate(prompts, { ...opts, adapterNames: ROWS })
  for (const [r, name] of ROWS.entries()) {
    t.deepEqual(mixed[r], await alone(peft, name, () => peft.generate(prompts[r], opts)), `row ${r} (${name})`)
  }
  // A single prompt takes a single name.
  t.deepEqual(await peft.generate(prompts[1], { ...opts, adapterNames: ['b'] }), mixed[1])
  peft.dispose()
})

test('adapterNames of the wrong length is an error', async (t) => {
  const peft = await threeAdapters()
  await t.throwsAsync(peft.forward({ ...fourRows(), adapterNames: ['a', 'b', '__base__'] }), { message: /adapterNames.*one adapter name per row of the batch \(4\).*3 names/ })
  await t.throwsAsync(peft.generate([[5, 6], [7]], { maxNewTokens: 2, adapterNames: ['a'] }), { message: /adapterNames.*\(2\).*1 names/ })
  await t.throwsAsync(peft.forward({ ...fourRows(), adapterNames: 'a' as unknown as string[] }), { message: /adapterNames: expected an array of adapter names/ })
  peft.dispose()
})

test('an unknown adapter name is an error', async (t) => {
  const peft = await threeAdapters()
  await t.throwsAsync(peft.forward({ ...fourRows(), adapterNames: ['a', 'nope', '__base__', 'ia3'] }), { message: /adapterNames.*non-existing adapter\(s\): nope/ })
  peft.dispose()
})

test('adapterNames while adapters are merged is an error', async (t) => {
  const peft = await threeAdapters()
  peft.mergeAdapter()
  await t.throwsAsync(peft.forward({ ...fourRows(), adapterNames: ROWS }), { message: /merged.*unmerge first/ })
  await t.throwsAsync(peft.generate([[5, 6]], { maxNewTokens: 2, adapterNames: ['b'] }), { message: /merged/ })
  peft.unmergeAdapter()
  await t.notThrowsAsync(peft.forward({ ...fourRows(), adapterNames: ROWS }))
  peft.dispose()
})

test('adapterNames in training mode is an error', async (t) => {
  const peft = await threeAdapters()
  peft.train()
  await t.throwsAsync(peft.forward({ ...fourRows(), adapterNames: ROWS }), { message: /adapterNames.*training mode/ })
  await t.throwsAsync(peft.generate([[5, 6]], { maxNewTokens: 2, adapterNames: ['b'] }), { message: /adapterNames.*training mode/ })
  peft.eval()
  await t.notThrowsAsync(peft.generate([[5, 6]], { maxNewTokens: 2, adapterNames: ['b'] }))
  peft.dispose()
})

test('a prompt-learning adapter in adapterNames is an error', async (t) => {
  const peft = await threeAdapters()
  await peft.loadAdapter(join(FIXTURES, 'cases', 'prefix_tuning'), 'prefix')
  await t.throwsAsync(peft.forward({ ...fourRows(), adapterNames: ['a', 'prefix', '__base__', 'ia3'] }), { message: /`prefix` is a prompt-learning adapter \(PREFIX_TUNING\)/ })
  peft.dispose()
})
