#!/usr/bin/env python3
"""PyTorch + PEFT twin of the Rust `bench_lora_tinyllama` (crates/peft-core/tests/gpu_check.rs).

LoRA training steps on a TinyLlama-1.1B-shaped LlamaForCausalLM with random bf16 weights:
r=16, alpha 32, target_modules="all-linear" (PEFT leaves lm_head out), no dropout, adapters
in f32 (PEFT's autocast_adapter_dtype default), torch.optim.AdamW, batch 8 x seq 512 of random
ids with labels = ids, no gradient checkpointing. Prints one BENCH line in the Rust format.

  python scripts/gpu_bench_torch.py [--attn sdpa|eager] [--batch 8] [--seq 512] [--steps 10]

Needs torch (CUDA), transformers and peft; no network (the model is built from a config).
"""
import argparse
import time

import torch


def mem_used(dev):
    free, total = torch.cuda.mem_get_info(dev)
    return total - free, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--device", default="cuda:0")
    a = ap.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    dev = torch.device(a.device)
    torch.manual_seed(0)
    used0, total = mem_used(dev)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=a.layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=64,
        rms_norm_eps=1e-5,  # rope theta: LLaMA's default 10000 (spelled differently in transformers 4 and 5)
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.device(dev):
        try:
            model = LlamaForCausalLM._from_config(cfg, attn_implementation=a.attn)
        except TypeError:  # older/newer signatures
            cfg._attn_implementation = a.attn
            model = LlamaForCausalLM(cfg)
        model = model.to(torch.bfloat16)
    attn_used = getattr(model.config, "_attn_implementation", a.attn)
    assert attn_used == a.attn, f"asked for {a.attn} attention, got {attn_used}"
    model.config.use_cache = False
    lcfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)  # autocast_adapter_dtype=True: adapters in f32
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    assert all(p.dtype == torch.float32 for p in params), "adapters should be f32"
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=g).to(dev)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)

    fwd_bwd = optim = total_time = 0.0
    peak_used = 0
    loss_v = float("nan")
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.cuda.synchronize(dev)
        peak_used = max(peak_used, mem_used(dev)[0])
        loss_v = out.loss.item()
        del out
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        if step >= a.warmup:
            fwd_bwd += t1 - t0
            optim += t2 - t1
            total_time += t2 - t0
        print(f"bench step {step}: loss {loss_v:.4f}, {(t2 - t0) * 1e3:.0f} ms", flush=True)

    gib = 1 << 30
    tokens = a.batch * a.seq * a.steps
    print(
        f"BENCH impl=torch-peft-{a.attn} layers={a.layers} batch={a.batch} seq={a.seq} steps={a.steps} "
        f"trainable_params={trainable} tokens_per_s={tokens / total_time:.1f} step_ms={total_time / a.steps * 1e3:.1f} "
        f"fwd_bwd_ms={fwd_bwd / a.steps * 1e3:.1f} optim_ms={optim / a.steps * 1e3:.1f} "
        f"peak_used_gib={(peak_used - used0) / gib:.2f} total_gib={total / gib:.1f} "
        f"max_allocated_gib={torch.cuda.max_memory_allocated(dev) / gib:.2f} loss={loss_v:.4f} "
        f"torch={torch.__version__}",
        flush=True,
    )


if __name__ == "__main__":
    main()
