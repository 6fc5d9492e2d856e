"""Reproduce the Triton faults on head + tail tiles of several rows (README, known limits).

1. Runs the forward kernel twice on the same single-group LayerNorm problem (2 x 280 bf16, a 256 + 32 head
   and tail in tiles of two rows): once as shipped for such tiles (the build that does not specialize
   ``ngroups``, ``forward.fused_forward_kernel``) and once as the build every other tile runs, which lets
   Triton specialize ``ngroups == 1``. On an H200 with Triton 3.6.0 the specialized build returned NaN
   (sessions 3 and 4).
2. Runs that shipped build on two groups of 273 columns (9 rows, 256 + 32 tiles of four rows) on the 1-D grid
   it is launched on and on the (group, row tile) grid other several-group tiles get. On an H200 with
   Triton 3.6.0 the 2-D grid gave NaN and wrong statistics (session 6; the 1-D grid was right).
Each prints its error against the float64 reference. If a Triton version gets a faulty variant right, the
launcher can use it with that version.

    python3 scripts/triton_ngroups_repro.py        # needs a CUDA GPU
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402

from custom_norm import norm_gated_reference  # noqa: E402
from custom_norm.kernels import forward as F  # noqa: E402


def run(kernel, x, w, b, cfg, group_size: int, grid_2d: bool = False) -> float:
    m, n = x.shape
    ngroups = n // group_size
    out = torch.full_like(x, float("nan"))
    mean = torch.full((ngroups, m), float("nan"), device=x.device)
    rstd = torch.full((ngroups, m), float("nan"), device=x.device)
    flags = F.kernel_flags(False, True, True, False, "silu", torch.float32)
    options = dict(F._launch_options(cfg, flags, True, grid_2d))
    row_tiles = triton.cdiv(m, cfg.block_m)
    grid = (ngroups, row_tiles) if grid_2d else (row_tiles * ngroups,)
    kernel[grid](x, x, w, b, out, mean, rstd, n, n, m, group_size, ngroups, *F.split_eps(1e-3), **options)
    ref = norm_gated_reference(x.double(), w.double(), b.double(), None, 1e-3, group_size, True, False, "silu")[0]
    return ((out.double() - ref).abs() / (1 + ref.abs())).max().item()


def problem(m: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = (torch.randn(m, n, device="cuda", generator=gen) * 1.5 - 4.4).bfloat16()
    w = (1 + 0.5 * torch.randn(n, device="cuda", generator=gen)).bfloat16()
    b = (0.5 * torch.randn(n, device="cuda", generator=gen)).bfloat16()
    return x, w, b


def main() -> int:
    if not torch.cuda.is_available():
        print("triton_ngroups_repro.py: needs a CUDA GPU")
        return 0
    cfg = F.ForwardConfig(block_m=2, block_n=256, num_warps=2, wide=False, block_tail=32)
    generic, specialized = F.fused_forward_kernel(cfg).kernel, F._fwd_kernel
    assert generic is not specialized, "the shipped forward runs these tiles with ngroups specialized"
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, w, b = problem(2, 280, gen)
    shipped, faulty = run(generic, x, w, b, cfg, 280), run(specialized, x, w, b, cfg, 280)
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}: largest relative error (bf16 rounding is "
          f"~4e-3)\n  one group, 2 x 280: shipped kernel {shipped:.3g}; with ngroups == 1 specialized {faulty:.3g}")
    cfg4 = F.ForwardConfig(block_m=4, block_n=256, num_warps=4, wide=False, block_tail=32)
    x, w, b = problem(9, 546, gen)
    shipped_grid, faulty_grid = run(generic, x, w, b, cfg4, 273), run(generic, x, w, b, cfg4, 273, grid_2d=True)
    print(f"  two groups of 273, 9 rows: shipped 1-D grid {shipped_grid:.3g}; on the 2-D grid {faulty_grid:.3g}")
    return 0 if max(shipped, shipped_grid) < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
