// Our forward pass against a real runtime: llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU binary)
// on the same GGUF and the same token ids; the teacher-forced argmax must agree at >= 95% of
// positions (both sides run Q4 weights, ours dequantized to f32, so near ties may flip).
// The model comes from `npm run fetch:smollm2`; without it the test is skipped with a reason.
import test from 'ava'
import { CHAT_PROMPTS, GEMMA3_GGUF, SMOLLM2_GGUF, checkGemma3, compareWithLlamaCpp, ifModelPresent } from './helpers/llamacpp'

ifModelPresent(test, SMOLLM2_GGUF, 'llamacpp.spec.ts', 'fetch:smollm2')('SmolLM2: our argmax agrees with llama.cpp at >= 95% of positions', async (t) => {
  await compareWithLlamaCpp(t, SMOLLM2_GGUF, CHAT_PROMPTS)
})

// Gemma 3 270M (base model, Q4_K_M, from `npm run fetch:gemma3`): sliding/full layers with two
// RoPE bases, q/k norms, (1 + w) norms, GeGLU, scaled embeddings, tied head, a SentencePiece
// tokenizer without a space prefix.
ifModelPresent(test, GEMMA3_GGUF, 'llamacpp.spec.ts', 'fetch:gemma3')('Gemma 3 270M: our argmax agrees with llama.cpp at >= 95% of positions', async (t) => {
  await checkGemma3(t)
})
