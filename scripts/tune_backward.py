"""Sweep the backward kernel's tiles, warps and persistent-grid size on the GPU (evidence for
``backward_config`` in custom_norm/kernels/backward.py; see BENCHMARKS.md's notes).

Times the backward launcher alone (CUDA graphs), bf16, for the issue's fwd+bwd shapes.
Usage: python3 scripts/tune_backward.py [--out DIR] [--only mamba2]

Before session 3 every candidate ran with the default 4 programs per SM whatever the printed pps said
(the loop set a module constant the configurations had already copied); candidates now carry their own.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from triton.testing import do_bench_cudagraph

import custom_norm.kernels.backward as bwd
from custom_norm.kernels.forward import head_and_tail, norm_gated_fwd_triton

SHAPES = {  # name: (M, N, group_size, norm_before_gate)
    "mamba2 16384x5120": (16384, 5120, None, False),
    "qwen3next 524288x128": (524288, 128, None, True),
    "nemotron-h 16384x8192 g1024": (16384, 8192, 1024, False),
}


def candidates(group: int, m: int, pps: int):
    """Configurations to time for a group size, each with ``pps`` programs per SM."""
    block_n = 1 << (group - 1).bit_length()
    for wide_block in ((1024, 2048, 4096) if block_n >= 4096 else ()):
        for warps in (4, 8, 16):
            yield bwd.BackwardConfig(1, wide_block, warps, True, pps)
    # a power-of-two head and a tail tile where that saves lanes (5120 = 4096 + 1024), as the forward does
    splits = sorted({(block_n, 0), head_and_tail(group)}, reverse=True)
    for block_m in (1, 2, 4, 8, 16, 32, 64):
        for head_n, tail_n in splits:
            tile = block_m * (head_n + tail_n)
            if tile > 8192 or tile < 256 or block_m > m:
                continue
            for warps in (2, 4, 8, 16, 32):
                if 4 <= tile // (32 * warps) <= 32:
                    yield bwd.BackwardConfig(block_m, head_n, warps, False, pps, tail_n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="time only the shapes whose name contains this")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()}")
    results = {}
    for name, (m, n, gs, nbg) in SHAPES.items():
        if args.only and args.only not in name:
            continue
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        z, dy = torch.randn_like(x), torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        _, mean, rstd = norm_gated_fwd_triton(x, w, None, z, 1e-6, gs, nbg, True, "silu")
        floor_bytes = 5 * x.numel() * x.element_size()

        def run(cfg, x=x, w=w, z=z, dy=dy, mean=mean, rstd=rstd, gs=gs, nbg=nbg):
            return bwd.norm_gated_bwd_triton(dy, x, w, None, z, mean, rstd, gs, nbg, True, "silu",
                                             [True, True, True, False], config=cfg)

        rows = []
        default = bwd.backward_config(gs or n, m)
        for pps in (2, 4, 8, 16):
            for cfg in [default, *candidates(gs or n, m, pps)] if pps == 2 else candidates(gs or n, m, pps):
                try:
                    run(cfg)
                    ms = do_bench_cudagraph(lambda cfg=cfg: run(cfg))
                except Exception as e:  # out of resources
                    print(f"  skip {cfg} pps={pps}: {type(e).__name__}")
                    continue
                rows.append((ms, cfg.programs_per_sm, cfg))
        rows.sort(key=lambda r: r[0])
        print(f"{name}: default {default}")
        for ms, pps, cfg in rows[:6]:
            print(f"    pps={pps:<2} {cfg} {ms*1e3:8.1f} us ({floor_bytes/ms/1e6:6.0f} GB/s)")
        results[name] = [[ms, pps, cfg.__dict__] for ms, pps, cfg in rows]
        del x, z, dy
    if args.out:
        with open(os.path.join(args.out, "tune_backward.json"), "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
