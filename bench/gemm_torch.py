"""PyTorch's side of bench/gemm.mjs: GFLOP/s of F.linear (x · Wᵀ) and g @ W on the shapes of
crates/peft-core/examples/gemm_bench.rs, best of `reps` runs after a warm-up, one JSON line per
shape. Usage: python bench/gemm_torch.py [reps]"""
import json
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [
    ("smollm2 q/o", 1024, 576, 576),
    ("smollm2 k/v", 1024, 576, 192),
    ("smollm2 gate/up", 1024, 576, 1536),
    ("smollm2 down", 1024, 1536, 576),
    ("smollm2 head", 1024, 576, 49152),
    ("llama-1b q/o", 512, 2048, 2048),
    ("llama-1b gate/up", 512, 2048, 8192),
    ("llama-1b down", 512, 8192, 2048),
]


def best_ms(reps, f):
    f()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with torch.no_grad():
        for name, m, k, n in SHAPES:
            x, w, g = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
            flop = 2.0 * m * k * n
            fwd = best_ms(reps, lambda: F.linear(x, w))
            bwd = best_ms(reps, lambda: g @ w)
            print(json.dumps({"shape": name, "m": m, "k": k, "n": n, "threads": torch.get_num_threads(),
                              "fwd_gflops": round(flop / fwd / 1e6, 1), "bwd_gflops": round(flop / bwd / 1e6, 1)}), flush=True)


main()
