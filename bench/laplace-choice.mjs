// Laplace-LoRA's GLM predictive on a multiple choice from the US-capitals demo (issue 16): for
// each held-out state, the next token after "The capital of <State> is" over the first tokens of
// the held-out capitals. NLL and ECE (10 bins) of MAP against the GLM (probit) predictive.
// Usage: node bench/laplace-choice.mjs MODEL ADAPTER_DIR (an adapter with laplace_state.safetensors)
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const { AutoModelForCausalLM, PeftModel } = require('../dist')
const { capitalsDataset, stateCapitals } = require('../dist/data/capitals')
const { expectedCalibrationError } = require('../dist/laplace-calibration')
const { readFileSync } = require('node:fs')

const [modelPath, adapterDir] = process.argv.slice(2)
const stat = () => readFileSync('/proc/stat', 'utf8').split('\n')[0]
console.log(`start ${new Date().toISOString()} loadavg ${readFileSync('/proc/loadavg', 'utf8').trim()}\n${stat()}`)
const peft = await PeftModel.fromPretrained(await AutoModelForCausalLM.fromPretrained(modelPath), adapterDir)
const posterior = peft.loadLaplace(adapterDir)
console.log(`prior precision ${posterior.priorPrecision}`)
const tok = peft.tokenizer
const held = new Set(capitalsDataset().heldOut.map((e) => e.messages[0].content))
const cases = stateCapitals().filter((s) => held.has(`What is the capital of ${s.state}?`)).map(({ state, capital }) => {
  const prompt = tok.applyChatTemplate([{ role: 'user', content: `What is the capital of ${state}?` }], { addGenerationPrompt: true }) + `The capital of ${state} is`
  const prefix = tok.encode(prompt)
  const full = tok.encode(`${prompt} ${capital}.`)
  return { state, capital, ids: prefix, answer: full[prefix.length] }
})
const targets = [...new Set(cases.map((c) => c.answer))]
console.log(`${cases.length} questions, ${targets.length} candidate first tokens`)
const scores = {}
for (const method of ['map', 'glm']) {
  const conf = []
  const correct = []
  let nll = 0
  const t0 = Date.now()
  for (const c of cases) {
    const out = await peft.laplacePredict([c.ids], { targetTokens: targets, method })
    const p = out.probs[0]
    const k = targets.indexOf(c.answer)
    let arg = 0
    for (let i = 1; i < p.length; i++) if (p[i] > p[arg]) arg = i
    nll -= Math.log(p[k])
    conf.push(p[arg])
    correct.push(arg === k)
  }
  scores[method] = { nll: nll / cases.length, ece: expectedCalibrationError(conf, correct), accuracy: correct.filter(Boolean).length / cases.length, seconds: (Date.now() - t0) / 1000 }
  console.log(method, JSON.stringify(scores[method]))
}
console.log(`end ${new Date().toISOString()} loadavg ${readFileSync('/proc/loadavg', 'utf8').trim()}\n${stat()}`)
peft.dispose()
