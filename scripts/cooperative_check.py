"""On a GPU: the split kernel's cooperative launch refused by the driver for real (a grid larger than can be
co-resident, by pretending the device has 64x its multiprocessors), and the launcher's fallback to two launches.
Prints the driver's message and whether the result matches the float64 reference.

Usage: python3 scripts/cooperative_check.py
"""

from __future__ import annotations

import torch

import custom_norm.kernels.forward as fwd
from custom_norm.reference import norm_gated_reference


def main() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(64, 65536, device=device, dtype=torch.bfloat16)
    z = torch.randn_like(x)
    w = torch.randn(65536, device=device, dtype=torch.bfloat16)
    real_sm_count = fwd.sm_count
    fwd.sm_count = lambda d: 64 * real_sm_count(d)
    real_launch = fwd._FWD_SPLIT.launch
    stages = []

    def launch(dev, grid, args, options):
        stages.append((grid, dict(options)["STAGE"]))
        try:
            real_launch(dev, grid, args, options)
        except RuntimeError as e:
            print(f"launch of {grid} programs, stage {stages[-1][1]}: {type(e).__name__}: {e}")
            raise

    fwd._FWD_SPLIT.launch = launch
    out, _, rstd = fwd.norm_gated_fwd_triton(x, w, None, z, 1e-6, None, True, True, "silu")
    torch.cuda.synchronize()
    ref, _, ref_rstd = norm_gated_reference(x.double(), w.double(), None, z.double(), 1e-6, None, True, True, "silu")
    err = ((out.double() - ref).abs() / (1 + ref.abs())).max().item()
    print(f"launches (programs, stage): {stages}; refused devices: {fwd.COOPERATIVE_REFUSED}")
    print(f"max relative error of out {err:.2e} (bf16), rstd {((rstd.double() - ref_rstd).abs() / ref_rstd).max():.2e}")
    stages.clear()
    fwd.norm_gated_fwd_triton(x, w, None, z, 1e-6, None, True, True, "silu")
    print(f"next call's launches: {stages}")


if __name__ == "__main__":
    main()
