"""Reproduce the Triton fault that made the kernels stop specializing ``ngroups`` (README, known limits).

Runs the forward kernel twice on the same single-group LayerNorm problem (2 x 280 bf16, a 256 + 32 head and
tail in tiles of two rows): once as shipped for such tiles (the build that does not specialize ``ngroups``,
``forward.fused_forward_kernel``) and once as the build every other tile runs, which lets Triton specialize
``ngroups == 1``, and prints each one's error against the float64 reference. On an H200 with Triton 3.6.0
the specialized build returned NaN (sessions 3 and 4). If a Triton version gets it right, head + tail
tiles of several rows can run the specialized build too with that version.

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


def run(kernel, x, w, b, cfg) -> float:
    m, n = x.shape
    out = torch.full_like(x, float("nan"))
    mean = torch.full((1, m), float("nan"), device=x.device)
    rstd = torch.full((1, m), float("nan"), device=x.device)
    flags = F.kernel_flags(False, True, True, False, "silu", torch.float32)
    options = dict(F._launch_options(cfg, flags, True))
    kernel[(triton.cdiv(m, cfg.block_m),)](x, x, w, b, out, mean, rstd, n, n, m, n, 1, *F.split_eps(1e-3), **options)
    ref = norm_gated_reference(x.double(), w.double(), b.double(), None, 1e-3, n, True, False, "silu")[0]
    return ((out.double() - ref).abs() / (1 + ref.abs())).max().item()


def main() -> int:
    if not torch.cuda.is_available():
        print("triton_ngroups_repro.py: needs a CUDA GPU")
        return 0
    cfg = F.ForwardConfig(block_m=2, block_n=256, num_warps=2, wide=False, block_tail=32)
    generic, specialized = F.fused_forward_kernel(cfg).kernel, F._fwd_kernel
    assert generic is not specialized, "the shipped forward runs these tiles with ngroups specialized"
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(2, 280, device="cuda", generator=gen) * 1.5 - 4.4).bfloat16()
    w = (1 + 0.5 * torch.randn(280, device="cuda", generator=gen)).bfloat16()
    b = (0.5 * torch.randn(280, device="cuda", generator=gen)).bfloat16()
    shipped, faulty = run(generic, x, w, b, cfg), run(specialized, x, w, b, cfg)
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}: largest relative error, shipped kernel "
          f"{shipped:.3g}; with ngroups == 1 specialized {faulty:.3g} (bf16 rounding is ~4e-3)")
    return 0 if shipped < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
