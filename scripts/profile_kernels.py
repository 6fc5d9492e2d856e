"""Run the issue's shapes a few times each, for a profiler to attach to.

    ncu --kernel-name regex:_bwd_kernel --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        python3 scripts/profile_kernels.py --only mamba2
    ncu --kernel-name regex:triton --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        python3 scripts/profile_kernels.py --only "wide 65536" --compiled   # torch.compile's kernel instead

Evidence for tuning (where a kernel's time goes: memory throughput, stalls, occupancy), not a benchmark.
"""

from __future__ import annotations

import argparse

import torch

from custom_norm import norm_gated_reference
from custom_norm.kernels.backward import norm_gated_bwd_triton
from custom_norm.kernels.forward import norm_gated_fwd_triton

SHAPES = {  # name: (M, N, group_size, norm_before_gate, gated, with backward)
    "mamba2 16384x5120": (16384, 5120, None, False, True, True),
    "qwen3next 524288x128": (524288, 128, None, True, True, True),
    "nemotron-h 16384x8192 g1024": (16384, 8192, 1024, False, True, True),
    "wide 65536 1024x65536": (1024, 65536, None, True, True, False),
    "rms nogate 16384x8192": (16384, 8192, None, True, False, False),
}


def compiled_forward(group_size, norm_before_gate):
    def forward(x, z, w):
        return norm_gated_reference(x, w, None, z, 1e-6, group_size, norm_before_gate, True, "silu")[0]
    return torch.compile(forward, dynamic=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="run only the shapes whose name contains this")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--compiled", action="store_true", help="torch.compile of the reference instead of ours")
    args = ap.parse_args()
    for name, (m, n, gs, nbg, gated, with_backward) in SHAPES.items():
        if args.only and args.only not in name:
            continue
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        z = torch.randn_like(x) if gated else None
        dy = torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        if args.compiled:
            torch._dynamo.reset()  # a fresh compile per shape (every forward made here shares one code object)
            fwd = compiled_forward(gs, nbg)
            for _ in range(args.repeat):
                fwd(x, z, w)
        for _ in range(0 if args.compiled else args.repeat):
            _, mean, rstd = norm_gated_fwd_triton(x, w, None, z, 1e-6, gs, nbg, True, "silu")
            if with_backward:
                norm_gated_bwd_triton(dy, x, w, None, z, mean, rstd, gs, nbg, True, "silu",
                                      [True, gated, True, False])
        torch.cuda.synchronize()
        print(f"{name}: ran {'compiled forward' if args.compiled else 'ours'} {args.repeat} times")


if __name__ == "__main__":
    main()
