// The built-in instruction set: US state capitals as chat Q&A, from @stdlib's public-domain
// datasets (state names and capitals), copied into us-state-capitals.json at development
// time by scripts/build-capitals.mjs so the package needs no data dependency.
import data from './us-state-capitals.json'

export interface ChatExample {
  messages: { role: 'user' | 'assistant'; content: string }[]
}

export interface CapitalsSplit {
  train: ChatExample[]
  heldOut: ChatExample[]
}

export function stateCapitals(): { state: string; capital: string }[] {
  return data.states.map((s) => ({ ...s }))
}

export function capitalQuestion(state: string): string {
  return `What is the capital of ${state}?`
}

export function capitalAnswer(state: string, capital: string): string {
  return `The capital of ${state} is ${capital}.`
}

/** Every `holdOutEvery`-th state is held out of training, to see what generalises. */
export function capitalsDataset(holdOutEvery = 5): CapitalsSplit {
  const train: ChatExample[] = []
  const heldOut: ChatExample[] = []
  stateCapitals().forEach(({ state, capital }, i) => {
    const ex: ChatExample = {
      messages: [
        { role: 'user', content: capitalQuestion(state) },
        { role: 'assistant', content: capitalAnswer(state, capital) },
      ],
    }
    ;(i % holdOutEvery === holdOutEvery - 1 ? heldOut : train).push(ex)
  })
  return { train, heldOut }
}
