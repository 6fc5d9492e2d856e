"""Time each kernel built with and without Triton's ``ngroups`` specialization, side by side.

Session 3 stopped Triton from specializing ``ngroups == 1`` in every kernel after that variant miscompiled
once (README, known limits); session 4's benchmark then found one-group shapes slower, and this script
measured by how much (BENCHMARKS.md). Since then only head + tail tiles of several rows run the generic
build. It times both builds of every kernel on the benchmark's shapes, alternating, in one process on one
card, and reports the largest difference between their outputs.

    python3 scripts/ab_specialization.py      # needs a CUDA GPU
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

from custom_norm.kernels import backward as B  # noqa: E402
from custom_norm.kernels import forward as F  # noqa: E402
from custom_norm.kernels.launch import CachedKernel  # noqa: E402

SHIPPED = {"fwd": F._FWD, "wide": F._FWD_WIDE, "bwd": B._BWD, "sums": B._BWD_ROW_SUMS}
GENERIC = {name: CachedKernel(triton.jit(k.kernel.fn, do_not_specialize=F.UNSPECIALIZED))
           for name, k in SHIPPED.items()}
SPECIALIZED = {name: CachedKernel(triton.jit(k.kernel.fn)) for name, k in SHIPPED.items()}

# name: (M, N, group_size, dtype, gated, norm_before_gate, rms, bias, backward too)
CASES = {
    "qwen3next 524288x128": (524288, 128, None, torch.bfloat16, True, True, True, False, True),
    "mamba2 16384x5120": (16384, 5120, None, torch.bfloat16, True, False, True, False, True),
    "mamba2 fp32": (16384, 5120, None, torch.float32, True, False, True, False, False),
    "mamba2 batch 64x5120": (64, 5120, None, torch.bfloat16, True, False, True, False, False),
    "nemotronh g1024": (16384, 8192, 1024, torch.bfloat16, True, False, True, False, True),
    "layernorm bias 4096": (16384, 4096, None, torch.bfloat16, False, True, False, True, False),
    "rms nogate 8192": (16384, 8192, None, torch.bfloat16, False, True, True, False, False),
    "wide 32768": (2048, 32768, None, torch.bfloat16, True, True, True, False, False),
    "wide 65536": (1024, 65536, None, torch.bfloat16, True, True, True, False, False),
}


def use(kernels: dict) -> None:
    F._FWD, F._FWD_WIDE, B._BWD, B._BWD_ROW_SUMS = kernels["fwd"], kernels["wide"], kernels["bwd"], kernels["sums"]


def compare(name: str, m, n, gs, dtype, gated, nbg, rms, bias, backward) -> None:
    x = torch.randn(m, n, device="cuda", dtype=dtype)
    z = torch.randn_like(x) if gated else None
    w = 1 + 0.1 * torch.randn(n, device="cuda", dtype=dtype)
    b = torch.randn(n, device="cuda", dtype=dtype) if bias else None
    dy = torch.randn_like(x)

    def fwd():
        return F.norm_gated_fwd_triton(x, w, b, z, 1e-6, gs, nbg, rms, "silu")

    _, mean, rstd = fwd()

    def bwd():
        return B.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, gs, nbg, rms, "silu", [True, gated, True, bias])

    jobs = {"fwd": fwd, **({"bwd": bwd} if backward else {})}
    times = {(job, build): [] for job in jobs for build in ("generic", "specialized")}
    results = {}
    for _ in range(3):
        for build, kernels in (("generic", GENERIC), ("specialized", SPECIALIZED)):
            use(kernels)
            for job, fn in jobs.items():
                results[job, build] = [t.float().clone() for t in fn() if t is not None]
                times[job, build].append(do_bench_cudagraph(fn) * 1e3)
    use(SHIPPED)
    for job in jobs:
        pairs = zip(results[job, "generic"], results[job, "specialized"], strict=True)
        diff = max(((a - b).abs().max().item() for a, b in pairs if a.numel()), default=0.0)
        t_gen, t_spec = (statistics.median(times[job, b]) for b in ("generic", "specialized"))
        print(f"{name:24s} {job}: generic {t_gen:8.1f} us  specialized {t_spec:8.1f} us  "
              f"({t_gen / t_spec:.3f}x)  max |difference| {diff:.3g}", flush=True)


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    for name, case in CASES.items():
        compare(name, *case)


if __name__ == "__main__":
    main()
