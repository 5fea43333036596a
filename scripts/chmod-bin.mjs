#!/usr/bin/env node
// After `tsc`: makes every `bin` of package.json executable (0755). tsc writes 0644, and the
// prepack of `npm pack` / `npm run test:package` deletes dist/ and rebuilds it, so without this
// `npx peft-node` in a checkout fails with "Permission denied". (npm sets the mode itself when it
// installs the package, so users of the tarball never depended on this.)
// Usage: node scripts/chmod-bin.mjs [package root, default: this repository]
import { chmodSync, existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..')
const { bin = {} } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const bins = typeof bin === 'string' ? { main: bin } : bin
for (const [name, file] of Object.entries(bins)) {
  if (!existsSync(join(root, file))) {
    process.stderr.write(`chmod-bin: ${file} (package.json "bin" ${name}) does not exist: run tsc first\n`)
    process.exit(1)
  }
  chmodSync(join(root, file), 0o755)
}
