// The demo's closing report: for every question answered wrong before training, the answers
// before and after, each after-answer marked right now or still wrong (so the list reads at a
// glance), then the counts for trained and held-out questions.
import { capitalQuestion } from '../data/capitals'

/** An answer is right when it names the capital (the model answers in a sentence). */
export const isRight = (answer: string, capital: string): boolean => answer.includes(capital)

/**
 * Lines to print. `before[i]`/`after[i]` answer `capitals[i]`; `trained(state)`: whether the
 * state's question was in the training set (the others are held out and starred).
 */
export function answerReport(capitals: { state: string; capital: string }[], before: string[], after: string[], trained: (state: string) => boolean): string[] {
  const wrongBefore = capitals.map((c, i) => ({ ...c, i })).filter((c) => !isRight(before[c.i], c.capital))
  if (wrongBefore.length === 0) return ['Every question was answered right before training.']
  const lines = ['Questions it got wrong before (* = held out, never trained on):']
  for (const c of wrongBefore) {
    const mark = isRight(after[c.i], c.capital) ? 'right now' : 'still wrong'
    lines.push(`  ${trained(c.state) ? ' ' : '*'} ${capitalQuestion(c.state)}`, `      before: ${before[c.i]}`, `      after:  ${after[c.i]}   <- ${mark}`)
  }
  const count = (seen: boolean) => {
    const group = wrongBefore.filter((c) => trained(c.state) === seen)
    return `${group.filter((c) => isRight(after[c.i], c.capital)).length}/${group.length}`
  }
  const still = wrongBefore.filter((c) => !isRight(after[c.i], c.capital)).map((c) => c.state)
  lines.push('', `wrong before -> right after: ${count(true)} trained questions, ${count(false)} held-out${still.length ? `; still wrong: ${still.join(', ')}` : ''}`)
  const broken = capitals.map((c, i) => ({ ...c, i })).filter((c) => isRight(before[c.i], c.capital) && !isRight(after[c.i], c.capital))
  if (broken.length) lines.push(`right before -> wrong after: ${broken.map((c) => `${c.state} ("${after[c.i]}")`).join(', ')}`)
  return lines
}
