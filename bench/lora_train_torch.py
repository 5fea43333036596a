"""The same LoRA training step as bench/lora-train.ts, with PyTorch + PEFT (the reference).

    python bench/lora_train_torch.py MODEL_DIR [--steps 5] [--warmup 1] [--batch 4] [--seq 256] [--threads 2] [--json]

MODEL_DIR is what bench/make-model.ts writes: config.json, model.safetensors, inputs.json.
f32, torch.set_num_threads(threads), AdamW(lr 1e-4, weight_decay 0) as the Node side.
"""
import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa (transformers' default) or eager")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    # A local folder: nothing is fetched (HF_HUB_OFFLINE is set too). Tied embeddings come
    # from the config, as for SmolLM2.
    model = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation=a.attn)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    load_s = time.perf_counter() - t0
    trainable, total = model.get_nb_trainable_parameters()

    with open(os.path.join(a.model, "inputs.json")) as f:
        ids = torch.tensor([r[: a.seq] for r in json.load(f)[: a.batch]], dtype=torch.long)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    times = {"forward": [], "backward": [], "optimizer": [], "step": [], "cpu": []}
    losses = []
    for i in range(a.warmup + a.steps):
        c_a = time.process_time()
        t_a = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        t_b = time.perf_counter()
        out.loss.backward()
        t_c = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t_d = time.perf_counter()
        losses.append(out.loss.item())
        del out
        if i >= a.warmup:
            times["forward"].append(t_b - t_a)
            times["backward"].append(t_c - t_b)
            times["optimizer"].append(t_d - t_c)
            times["step"].append(t_d - t_a)
            times["cpu"].append(time.process_time() - c_a)
        if not a.json:
            print(f"step {i}{' (warm-up)' if i < a.warmup else ''}: {t_d - t_a:.2f} s, loss {losses[-1]:.4f}", flush=True)

    step_s = statistics.median(times["step"])
    result = {
        "impl": "torch+peft",
        "torch": torch.__version__,
        "attn": a.attn,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "seq": a.seq,
        "steps": a.steps,
        "trainable": trainable,
        "all": total,
        "load_s": load_s,
        "step_s": step_s,
        "step_s_all": times["step"],
        "forward_s": statistics.median(times["forward"]),
        "backward_s": statistics.median(times["backward"]),
        "optimizer_s": statistics.median(times["optimizer"]),
        # CPU seconds (all threads) per step: less sensitive than wall time to other load.
        "cpu_s": statistics.median(times["cpu"]),
        "tokens_per_s": a.batch * a.seq / step_s,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "losses": losses,
        "loadavg": list(os.getloadavg()),
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"torch {torch.__version__} + PEFT LoRA r=16, batch {a.batch} x seq {a.seq}, {a.steps} steps, {result['threads']} threads")
        print(f"  step {step_s:.2f} s (forward {result['forward_s']:.2f}, backward {result['backward_s']:.2f}, optimizer {result['optimizer_s']:.3f}), CPU {result['cpu_s']:.2f} s")
        print(f"  {result['tokens_per_s']:.1f} tokens/s, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
