// Run as a plain child process by workers.spec.ts (never inside ava's process, whose main thread has
// already loaded the addon and would hide the bug): two Workers train one after another, each
// loading the addon on its own and exiting, then the main thread loads it (issue 15: the second
// load died with SIGSEGV in mimalloc's thread init).
const { Worker } = require('node:worker_threads')
const { join } = require('node:path')

const [modelDir, ids] = [process.argv[2], JSON.parse(process.argv[3])]
const TSX = require.resolve('tsx/cjs')
const ENTRY = join(__dirname, 'train-worker.ts')

function trainInWorker() {
  const worker = new Worker(`require(${JSON.stringify(TSX)}); require(${JSON.stringify(ENTRY)})`, {
    eval: true,
    workerData: { modelDir, ids, steps: 2 },
  })
  return new Promise((resolve, reject) => {
    let losses
    worker.on('message', (m) => {
      if (m.type === 'done') losses = m.losses
      else if (m.type === 'error') reject(new Error(m.stack))
    })
    worker.on('error', reject)
    worker.on('exit', (code) => (losses ? resolve(losses) : reject(new Error(`worker exited with ${code}`))))
  })
}

async function main() {
  const first = await trainInWorker()
  const second = await trainInWorker()
  const native = require(join(__dirname, '..', '..', 'index.js'))
  process.stdout.write(JSON.stringify({ first, second, mainLoaded: typeof native.NativeModel === 'function' }))
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack))
  process.exit(1)
})
