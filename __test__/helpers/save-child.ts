// Child process for saves.spec.ts: saves two different adapters (r=2 and r=4) into one folder,
// one after the other, until killed; says SAVING once the first save is done.
import { tinyLora } from './train-data'

async function main(): Promise<void> {
  const dir = process.argv[2]
  const [a, b] = [await tinyLora({ r: 2 }), await tinyLora({ r: 4 })]
  await a.savePretrained(dir)
  process.stdout.write('SAVING\n')
  for (;;) {
    await b.savePretrained(dir)
    await a.savePretrained(dir)
  }
}

void main()
