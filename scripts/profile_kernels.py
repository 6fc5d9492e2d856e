"""Run the issue's backward (and forward) shapes a few times each, for a profiler to attach to.

    ncu --kernel-name regex:_bwd_kernel --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        python3 scripts/profile_kernels.py --only mamba2

Evidence for tuning (where a kernel's time goes: memory throughput, stalls, occupancy), not a benchmark.
"""

from __future__ import annotations

import argparse

import torch

from custom_norm.kernels.backward import norm_gated_bwd_triton
from custom_norm.kernels.forward import norm_gated_fwd_triton

SHAPES = {  # name: (M, N, group_size, norm_before_gate)
    "mamba2 16384x5120": (16384, 5120, None, False),
    "qwen3next 524288x128": (524288, 128, None, True),
    "nemotron-h 16384x8192 g1024": (16384, 8192, 1024, False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="run only the shapes whose name contains this")
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    for name, (m, n, gs, nbg) in SHAPES.items():
        if args.only and args.only not in name:
            continue
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        z, dy = torch.randn_like(x), torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        for _ in range(args.repeat):
            _, mean, rstd = norm_gated_fwd_triton(x, w, None, z, 1e-6, gs, nbg, True, "silu")
            norm_gated_bwd_triton(dy, x, w, None, z, mean, rstd, gs, nbg, True, "silu", [True, True, True, False])
        torch.cuda.synchronize()
        print(f"{name}: ran forward and backward {args.repeat} times")


if __name__ == "__main__":
    main()
