// ES module consumer: `import` goes through the "import" condition of `exports` (dist/index.mjs).
import { LlamaModel, getPeftModel, LoraConfig, PeftModel, AdamW } from 'peft-node'
import peftDefault from 'peft-node'
import { createRequire } from 'node:module'

const { smoke } = createRequire(import.meta.url)('./common.cjs')
if (peftDefault.LlamaModel !== LlamaModel) throw new Error('the default export and the named export differ')
if (createRequire(import.meta.url)('peft-node').LlamaModel !== LlamaModel) throw new Error('import and require give different modules (dual-package hazard)')
await smoke({ LlamaModel, getPeftModel, LoraConfig, PeftModel, AdamW }, 'esm', process.argv[2])
