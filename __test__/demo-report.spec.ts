// The demo's answer list after training marks each question it got wrong before as right now
// or still wrong (it printed both kinds alike), and the summary counts add up.
import test from 'ava'
import { answerReport } from '../src/cli/demo-report'

const CAPITALS = [
  { state: 'Ohio', capital: 'Columbus' },
  { state: 'Vermont', capital: 'Montpelier' },
  { state: 'Texas', capital: 'Austin' },
  { state: 'Maine', capital: 'Augusta' },
]

test('each question wrong before is marked "right now" or "still wrong"; held-out ones are starred', (t) => {
  const before = ['Cleveland', 'Burlington', 'Austin', 'Portland']
  const after = ['Columbus', 'Burlington', 'Dallas', 'Augusta']
  const trained = new Set(['Ohio', 'Vermont', 'Texas'])
  const lines = answerReport(CAPITALS, before, after, (s) => trained.has(s)).join('\n')
  t.is(
    lines,
    [
      'Questions it got wrong before (* = held out, never trained on):',
      '    What is the capital of Ohio?',
      '      before: Cleveland',
      '      after:  Columbus   <- right now',
      '    What is the capital of Vermont?',
      '      before: Burlington',
      '      after:  Burlington   <- still wrong',
      '  * What is the capital of Maine?',
      '      before: Portland',
      '      after:  Augusta   <- right now',
      '',
      'wrong before -> right after: 1/2 trained questions, 1/1 held-out; still wrong: Vermont',
      'right before -> wrong after: Texas ("Dallas")',
    ].join('\n'),
  )
})

test('nothing wrong before: the report says so', (t) => {
  const all = CAPITALS.map((c) => c.capital)
  t.deepEqual(answerReport(CAPITALS, all, all, () => true), ['Every question was answered right before training.'])
})
