"""Time the forward of several-group problems on a 1-D and on a 2-D grid, side by side.

A 1-D grid numbers programs group-fastest and each program divides its id by the runtime group count; a
2-D grid (group, row tile) gives both directly (``forward.GRID_2D_GROUPS``). Alternating, medians of three
CUDA-graph timings each, one process on one card; outputs must be bitwise equal.

    python3 scripts/ab_grid.py      # needs a CUDA GPU
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

from custom_norm.kernels import forward as F  # noqa: E402

# name: (M, N, group_size, norm_before_gate, rms)
CASES = {
    "nemotron-h decode 1x8192 g1024": (1, 8192, 1024, False, True),
    "nemotron-h 64x8192 g1024": (64, 8192, 1024, False, True),
    "nemotron-h 16384x8192 g1024": (16384, 8192, 1024, False, True),
    "8 groups of 128, 262144x1024": (262144, 1024, 128, True, True),
    "32 groups of 256, layernorm 8192x8192": (8192, 8192, 256, True, False),
}


def main() -> None:
    print(f"device {torch.cuda.get_device_name()}")
    for name, (m, n, gs, nbg, rms) in CASES.items():
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        z = torch.randn_like(x)
        w = 1 + 0.1 * torch.randn(n, device="cuda", dtype=torch.bfloat16)

        def fwd(x=x, z=z, w=w, gs=gs, nbg=nbg, rms=rms):
            return F.norm_gated_fwd_triton(x, w, None, z, 1e-6, gs, nbg, rms, "silu")

        times = {True: [], False: []}
        outputs = {}
        for _ in range(3):
            for grid_2d in (False, True):
                F.GRID_2D_GROUPS = grid_2d
                outputs[grid_2d] = fwd()
                times[grid_2d].append(do_bench_cudagraph(fwd) * 1e3)
        F.GRID_2D_GROUPS = True
        equal = all(torch.equal(a, b) for a, b in zip(outputs[False], outputs[True], strict=True))
        one, two = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:40s} 1-D {one:8.2f} us   2-D {two:8.2f} us   1-D/2-D {one / two:.3f}x   "
              f"bitwise equal: {equal}")


if __name__ == "__main__":
    main()
