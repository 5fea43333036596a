// `peft-node chat` with piped input: every line is a turn, answered in order, until EOF.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { main } from '../src/cli/main'
import { MODEL_DIR } from './helpers/fixtures'
import { capture } from './helpers/cli'

const CHAT = ['chat', '--model', MODEL_DIR, '--max-tokens', '3']

/** The turns the transcript shows: each `> line` is echoed when chat reads it, and a reply follows it. */
function turns(text: string): string[] {
  return [...text.matchAll(/^> (.+)\n/gm)].map((m) => m[1])
}

test('chat answers every line of piped input, in order (it answered only the first)', async (t) => {
  const io = { ...capture(), input: Readable.from(['What is 2+2?\nSay hi\n', 'Name a color\n']) }
  t.is(await main(CHAT, io), 0, io.errors())
  t.deepEqual(turns(io.text()), ['What is 2+2?', 'Say hi', 'Name a color'])
  // A reply (at least its closing newline) after the last question, then the prompt at EOF.
  t.regex(io.text(), /> Name a color\n[^]*\n> $/)
})

test('chat: /reset and /exit are commands, not questions; lines after /exit are not read', async (t) => {
  const io = { ...capture(), input: Readable.from(['first\n/reset\nsecond\n/exit\nnever\n']) }
  t.is(await main(CHAT, io), 0, io.errors())
  t.deepEqual(turns(io.text()), ['first', '/reset', 'second', '/exit'])
  t.notRegex(io.text(), /never/)
})

test('the bin: printf "A\\nB\\nC\\n" | peft-node chat answers three times', (t) => {
  const bin = join(__dirname, '..', 'dist', 'cli', 'main.js')
  const r = spawnSync(process.execPath, [bin, ...CHAT], { input: 'A\nB\nC\n', encoding: 'utf8', env: { ...process.env, RAYON_NUM_THREADS: '1' } })
  t.is(r.status, 0, r.stderr)
  t.deepEqual(turns(r.stdout), ['A', 'B', 'C'])
})
