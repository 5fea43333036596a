// Running `peft-node` commands in-process with captured output.
import type { Io } from '../../src/cli/io'

export type Captured = Io & { text: () => string; errors: () => string }

export function capture(isTTY = false): Captured {
  const out: string[] = []
  const err: string[] = []
  return { out: (l) => out.push(l + '\n'), err: (l) => err.push(l + '\n'), write: (s) => out.push(s), isTTY, text: () => out.join(''), errors: () => err.join('') }
}
