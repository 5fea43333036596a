// CommonJS consumer: require('peft-node') goes through the "require" condition of `exports`.
'use strict'
const peft = require('peft-node')
const { smoke } = require('./common.cjs')

smoke(peft, 'cjs', process.argv[2]).catch((e) => {
  console.error(e)
  process.exit(1)
})
