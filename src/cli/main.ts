#!/usr/bin/env node
// The `peft-node` command: train | generate | chat | eval | info | merge | export | plan | search | adapter-soup.
import { parseArgs } from './args'
import { trainCommand } from './train'
import { chatCommand, evalCommand, exportCommand, generateCommand, infoCommand, mergeCommand } from './commands'
import { planCommand } from './plan'
import { processIo, type Io } from './io'
import { checkCommandLine } from './options'
import { searchCommand } from './search'
import { laplaceCommand } from './laplace'
import { soupCommand } from './soup'

export const USAGE = `peft-node <command> [options]

  train     fine-tune an adapter (no options: the SmolLM2 US-capitals demo)
            --model M --data D (file.jsonl, or a folder with train.jsonl/valid.jsonl)
            [--method lora|dora|rslora|loha|lokr|ia3|... plus its options, e.g. --r 8 --lora-alpha 16
             --lora-dropout 0 --target-modules q_proj,v_proj; --method-config file.json]
            [--steps N | --epochs N] [--batch-size 4] [--learning-rate 2e-4] [--output adapters]
            [--resume DIR] [--gradient-accumulation-steps N] [--max-seq-length 2048]
            [--warmup-steps N] [--lr-schedule linear|cosine|constant] [--max-grad-norm 1]
            [--eval-every N] [--save-every N] [--valid-split 0.1] [--seed 0] [-c config.yaml|json]
            [--method adapter-fusion|mole --compose DIR1,DIR2,...] trains the fusion/gates over
             trained adapters (bottleneck for adapter-fusion, LoRA for mole), kept frozen
            [--search-result best.json] trains the configuration \`peft-node search --output\` wrote
  generate  --model M [--adapter DIR] --prompt "..." [--max-tokens 256] [--temperature 0] [--raw]
  chat      --model M [--adapter DIR] [--system "..."]      interactive; /reset, /exit
  eval      --model M [--adapter DIR] --data D               loss and perplexity
  info      M | --model M [--adapter DIR | --method ... ]    trainable parameters, targeted modules
  merge     --model M --adapter DIR --output DIR [--dtype bfloat16] [--force]
            a Hugging Face checkpoint; an existing, non-empty --output needs --force
  plan      M | --model M [--batch-size 4] [--seq-len 2048] [--gradient-checkpointing] [--dtype f32|bf16]
            [--base-type q4_0|q4_k|q8_0|...: as a file of that type would be]
            [--optimizer adamw|sgd] [--method lora|ia3 --r 8 --target-modules ...] [--trainable-parameters N]
            memory per component (weights, adapter, gradients, optimizer, activations, logits, workspace)
            from the config and tensor types alone (docs/memory.md)
  export    --model M --adapter DIR --format gguf-lora --output FILE.gguf [--outtype f16|f32|bf16|q8_0] [--force]
            a llama.cpp LoRA adapter to load next to the base GGUF (llama.cpp, Ollama, LM Studio)
  export    --model M --adapter DIR --format gguf --output FILE.gguf [--outtype f16|...|q4_0|q4_k_m] [--ollama]
            the merged model as one GGUF (tokenizer, chat template); --ollama adds a Modelfile beside it
  export    --model M --adapter DIR --format mlx --output DIR     an mlx-lm adapter folder

  search    --model M --data D --budget N --trials N [--steps 20] [--seed 0] [--log trials.jsonl]
            [--output best.json] [--groups G] [--methods none,lora,bottleneck,ia3] [--lora-ranks 1,2,4,8,16]
            [--bottleneck-sizes 1,2,...] [--prefix-lengths 0,1,...] [--lora-targets q_proj,v_proj]
            [--learning-rate] [--batch-size] [--valid-split 0.2]
            AutoPEFT-style search of which layers get which method and size under a budget of
            trainable parameters; prints each trial and the Pareto front (docs/search.md)
  laplace   --model M --adapter DIR --data D [--hessian fisher|empirical] [--prior-precision λ]
            [--max-factor-side 256] [--factor-rank 32] [--fit-batches N] [--samples 8] [--output DIR]
            Laplace-LoRA on a trained LoRA adapter: fits the Kronecker-factored posterior, writes it
            next to the adapter, reports held-out NLL and ECE of MAP vs Laplace (docs/laplace.md);
            \`train --method laplace-lora\` trains LoRA and then fits with the defaults
  adapter-soup  --model M --adapters DIR1,DIR2,... --data D --output DIR [--top-k 3] [--force]
            AdapterSoup: the --top-k adapters with the lowest loss on the samples in D, averaged,
            written as an adapter folder (adapters of one method and config)

  --model and --adapter also take a Hugging Face Hub id (org/name), downloaded into the shared
  HF cache: [--revision R] [--adapter-revision R] [--file F.gguf] (HF_TOKEN, HF_HUB_OFFLINE, ...)

  Unknown options are refused. generate and chat also take --top-p, --top-k and --seed.`

export async function main(argv: string[], io: Io = processIo, signal?: AbortSignal): Promise<number> {
  const { command, flags, positional } = parseArgs(argv)
  try {
    if (!command || command === 'help' || flags.help) {
      io.out(USAGE)
      return command || flags.help ? 0 : 1
    }
    const args = checkCommandLine(command, flags, positional)
    if (command === 'train') await trainCommand(flags, io, signal)
    else if (command === 'generate') await generateCommand(flags, args, io)
    else if (command === 'chat') await chatCommand(flags, io)
    else if (command === 'eval') await evalCommand(flags, io)
    else if (command === 'info') await infoCommand(flags, args, io)
    else if (command === 'merge') await mergeCommand(flags, io)
    else if (command === 'export') await exportCommand(flags, io)
    else if (command === 'plan') planCommand(flags, args, io)
    else if (command === 'search') await searchCommand(flags, io, signal)
    else if (command === 'laplace') await laplaceCommand(flags, io, signal)
    else if (command === 'adapter-soup') await soupCommand(flags, io)
    else throw new Error(`unknown command "${command}"; run \`peft-node help\``)
    return 0
  } catch (e) {
    io.err(`peft-node ${command}: ${(e as Error).message}`)
    return 1
  }
}

if (require.main === module) {
  // Warnings (unknown config fields, adapter notes) as plain `warning:` lines, without Node's
  // "(node:PID) PeftWarning" prefix and --trace-warnings hint, which are noise in a CLI.
  // `peft-node info M | head`: the reader may close the pipe before we are done; that is not an
  // error to report (Node would throw EPIPE with a stack trace), just the end of the output.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0)
    throw e
  })
  process.removeAllListeners('warning')
  process.on('warning', (w) => process.stderr.write(`warning: ${w.message}\n`))
  // First Ctrl-C: stop after the current step and save a checkpoint; second: quit now.
  const ac = new AbortController()
  process.on('SIGINT', () => {
    if (ac.signal.aborted) process.exit(130)
    process.stderr.write('\nstopping after this step (Ctrl-C again to quit now)...\n')
    ac.abort()
  })
  // setImmediate: warnings emitted during the command (on process.nextTick) print before exit.
  main(process.argv.slice(2), processIo, ac.signal).then((code) => setImmediate(() => process.exit(code)))
}
