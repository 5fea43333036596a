// Temp folders for specs that are always removed: when the test ends (passed or failed, via
// t.teardown) and, for folders made outside a test or by a test that crashed its worker, when
// the worker process exits. `npm test` once left ~75 peft-node-* folders (46 MB) in /tmp.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const live = new Set<string>()

function remove(dir: string): void {
  rmSync(dir, { recursive: true, force: true })
  live.delete(dir)
}

// 'exit' handlers must be synchronous: rmSync is.
process.on('exit', () => {
  for (const d of Array.from(live)) remove(d)
})

/** The part of ava's ExecutionContext this needs (also satisfied by a stub in tests of this helper). */
export interface Teardown {
  teardown(fn: () => void): void
}

/**
 * A fresh folder `<tmp>/<prefix>XXXXXX`. With `t`, removed when that test ends; always removed
 * when the process exits.
 */
export function tempDir(t?: Teardown, prefix = 'peft-node-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  live.add(dir)
  t?.teardown(() => remove(dir))
  return dir
}

/** Folders made by tempDir and not yet removed (for the helper's own spec). */
export function liveTempDirs(): string[] {
  return [...live]
}
