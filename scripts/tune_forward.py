"""Sweep the forward kernel's tile shapes and warps on the GPU; prints the best config per shape.

Evidence for ``forward_config`` in custom_norm/kernels/forward.py (see BENCHMARKS.md's notes).
Usage: python3 scripts/tune_forward.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton
from triton.testing import do_bench_cudagraph

import custom_norm.kernels.forward as fwd


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench_cudagraph(lambda: b.copy_(a))
    return 2 * a.numel() / ms / 1e6  # GB/s


def bench(x, w, z, gs, cfg, nbg=False, rms=True):
    fn = lambda: fwd.norm_gated_fwd_triton(x, w, None, z, 1e-6, gs, nbg, rms, "silu", config=cfg)  # noqa: E731
    fn()
    return do_bench_cudagraph(fn)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--elements", type=int, default=1 << 26)
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}  copy bandwidth {bw:.0f} GB/s  triton {triton.__version__}")
    results = []
    shapes = [(128, None), (256, None), (512, None), (8192, 1024), (2048, None), (4096, None), (5120, None),
              (8192, None), (16384, None), (32768, None), (65536, None)]
    for n, gs in shapes:
        m = args.elements // n
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        z = torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        nbytes = 3 * x.numel() * x.element_size()
        group = gs or n
        block_n = triton.next_power_of_2(group)
        configs = []
        if block_n <= 32768:
            for block_m in (1, 2, 4, 8, 16, 32, 64, 128):
                if block_m * block_n > 32768 or block_m * block_n < 512:
                    continue
                for warps in (1, 2, 4, 8, 16, 32):
                    per_thread = block_m * block_n // (32 * warps)
                    if 4 <= per_thread <= 64:
                        configs.append(fwd.ForwardConfig(block_m, block_n, warps, False))
        if group >= 4096:
            for chunk in (1024, 2048, 4096, 8192):
                for warps in (4, 8, 16):
                    configs.append(fwd.ForwardConfig(1, chunk, warps, True))
        default = fwd.forward_config(group, m)
        timed = []
        for cfg in configs:
            try:
                ms = bench(x, w, z, gs, cfg)
            except Exception as e:  # out of resources etc.
                print(f"  skip {cfg}: {type(e).__name__}")
                continue
            timed.append((ms, cfg))
        timed.sort(key=lambda t: t[0])
        d_ms = bench(x, w, z, gs, default)
        print(f"N={n} gs={group} M={m}: default {default} {d_ms*1e3:.1f} us ({nbytes/d_ms/1e6/bw*100:.0f}%)")
        for ms, cfg in timed[:4]:
            print(f"    {cfg} {ms*1e3:.1f} us ({nbytes/ms/1e6/bw*100:.0f}%)")
        results.append({"n": n, "group": group, "m": m, "default": [default.__dict__, d_ms],
                        "ranked": [[c.__dict__, t] for t, c in timed]})
        del x, z
    if args.out:
        with open(os.path.join(args.out, "tune_forward.json"), "w") as f:
            json.dump({"copy_gbps": bw, "results": results}, f)


if __name__ == "__main__":
    main()
