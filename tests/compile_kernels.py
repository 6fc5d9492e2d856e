"""Compile every Triton kernel of custom_norm for an sm_90 GPU with the installed Triton, without a GPU.

Triton's interpreter (what CI runs the kernels in) executes the kernels as Python and never meets the
compiler: a kernel that the compiler rejects (a construct the interpreter accepts, say) passes every
interpreter test and fails on the first GPU call. This compiles one variant per code path of each kernel
(constexpr branches: tails, wide options, gates, norms, gradients, float64) with the launchers' own
constexpr options, through Triton's front end, optimizer and ptxas. Run by tests/test_kernel_compile.py in a
process without TRITON_INTERPRET; alone: ``python tests/compile_kernels.py [--all]`` (one line a variant;
``--all`` adds every configuration the launch rules choose).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from custom_norm.kernels import backward as B  # noqa: E402
from custom_norm.kernels import forward as F  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
FLOAT_POINTERS = {"MEAN", "RSTD", "ROW_SUMS", "DW_PARTIAL", "DB_PARTIAL", "PARTIAL", "PARTIALS"}
INT_POINTERS = {"ARRIVED"}
FLOAT_SCALARS = {"eps_hi", "eps_lo"}


def compile_variant(kernel, options: tuple[tuple[str, object], ...], data: str, ints: dict[str, int] | None = None):
    """Compile ``kernel`` with the constexprs and num_warps in ``options``; ``data`` is the tensors' type.
    ``ints``: values of integer parameters, specialized as a launch would (1 becomes a constant, multiples
    of 16 are marked divisible); the others compile unspecialized. Returns Triton's compiled kernel (``.asm``
    holds its PTX and cubin)."""
    ints = ints or {}
    opts = dict(options)
    compile_options = {"num_warps": opts.pop("num_warps")}
    for option in ("maxnreg", "launch_cooperative_grid"):
        if option in opts:
            compile_options[option] = opts.pop(option)
    names = [p.name for p in kernel.params]
    signature, constexprs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[(i,)] = opts.pop(p.name)
        elif ints.get(p.name) == 1:
            signature[p.name] = "constexpr"
            constexprs[(i,)] = 1
        elif p.name in FLOAT_SCALARS:
            signature[p.name] = "fp32"
        elif p.name.isupper() and p.name != "M":  # tensors are the upper-case parameters (M is the row count)
            signature[p.name] = "*fp32" if p.name in FLOAT_POINTERS else "*i32" if p.name in INT_POINTERS else data
        else:
            signature[p.name] = "i32"
    assert not opts, f"options the kernel does not take: {opts}"
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in names
               if signature[n].startswith("*") or (signature[n] == "i32" and ints.get(n, 1) % 16 == 0)}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(src, target=TARGET, options=compile_options)


def flags(has_z=True, nbg=False, rms=True, sigmoid=False, weight=True, dtype=torch.float32):
    return F.kernel_flags(has_z, weight, nbg, rms, "sigmoid" if sigmoid else "silu", dtype)


def variants():
    """(name, kernel, options, data type) for each code path."""
    fused = [
        ("fwd 2x256+32 layer nogate bias", F.ForwardConfig(2, 256, 2, False, 32), flags(has_z=False, rms=False), True),
        ("fwd 1x4096+1024 rms gate-before", F.ForwardConfig(1, 4096, 8, False, 1024), flags(), False),
        ("fwd 8x128 rms gate-after sigmoid", F.ForwardConfig(8, 128, 4, False), flags(nbg=True, sigmoid=True), False),
        ("fwd 4x64 layer float64", F.ForwardConfig(4, 64, 1, False), flags(rms=False, dtype=torch.float64), True),
        ("fwd 2x256+32 layer nogate bias, weight first", F.ForwardConfig(2, 256, 2, False, 32, weight_first=True),
         flags(has_z=False, rms=False), True),
        ("fwd 1x4096+1024 rms gate-before, weight first", F.ForwardConfig(1, 4096, 8, False, 1024, weight_first=True),
         flags(), False),
        ("fwd 4x64 layer gate-after float64, weight first", F.ForwardConfig(4, 64, 1, False, weight_first=True),
         flags(nbg=True, rms=False, dtype=torch.float64), True),
    ]
    for name, cfg, fl, bias in fused:
        yield name, F._fwd_kernel, F._launch_options(cfg, fl, bias), "*fp64" if "float64" in name else "*bf16"
    yield ("fwd 2x1024 rms gate-before, 2-D grid", F._fwd_kernel,
           F._launch_options(F.ForwardConfig(2, 1024, 4, False), flags(), False, True), "*bf16")
    wide = [
        ("fwd wide rms gate-after", F.ForwardConfig(1, 4096, 8, True), flags(nbg=True)),
        ("fwd wide layer gate-before, reversed pass 2 + L2 hints",
         F.ForwardConfig(1, 4096, 8, True, reverse_pass2=True, l2_hints=True), flags(rms=False)),
        ("fwd wide rms gate-after, persistent grid", F.ForwardConfig(1, 8192, 16, True, programs_per_sm=1),
         flags(nbg=True)),
        ("fwd wide rms gate-after, one reduction a row + L2 hints",
         F.ForwardConfig(1, 2048, 8, True, l2_hints=True, reduce_once=True), flags(nbg=True)),
        ("fwd wide rms gate-after, next chunk prefetched, reversed pass 2",
         F.ForwardConfig(1, 8192, 32, True, reverse_pass2=True, l2_hints=True, prefetch_step=8), flags(nbg=True)),
        ("fwd wide layer gate-before, next chunk prefetched, registers capped",
         F.ForwardConfig(1, 4096, 8, True, prefetch_step=16, max_registers=40), flags(rms=False)),
        ("fwd wide rms ungated, L2 hints, one reduction a row, output stored evict_first",
         F.ForwardConfig(1, 4096, 16, True, l2_hints=True, reduce_once=True, store_hint=True), flags(has_z=False)),
    ]
    for name, cfg, fl in wide:
        yield name, F._fwd_wide_kernel, F._launch_options(cfg, fl, True), "*bf16"
    split = [
        ("fwd split rms gate-after, one launch", F.ForwardConfig(1, 16384, 16, True, split=True), flags(nbg=True), 0),
        ("fwd split layer gate-before, statistics launch", F.ForwardConfig(1, 8192, 16, True, split=True),
         flags(rms=False), 1),
        ("fwd split layer gate-before, output launch", F.ForwardConfig(1, 8192, 16, True, split=True),
         flags(rms=False), 2),
        ("fwd split layer gate-before float64, one launch", F.ForwardConfig(1, 4096, 8, True, split=True),
         flags(rms=False, dtype=torch.float64), 0),
    ]
    for name, cfg, fl, stage in split:
        yield (name, F._fwd_split_kernel, F._split_launch_options(cfg, fl, True, 4, stage),
               "*fp64" if "float64" in name else "*bf16")
    backward = [
        ("bwd 1x8192 rms gate-before dx dz dw", B.BackwardConfig(1, 8192, 32, False, 2), flags(), True,
         (True, True, True, False), False),
        ("bwd 1x4096+1024 rms gate-before", B.BackwardConfig(1, 4096, 16, False, 2, 1024), flags(), False,
         (True, True, True, False), False),
        ("bwd 1x4096+1024 layer gate-after reloaded", B.BackwardConfig(1, 4096, 16, False, 2, 1024, True),
         flags(nbg=True, rms=False), True, (True, True, True, True), False),
        ("bwd 1x4096+1024 rms gate-before reloaded, at most 80 registers",
         B.BackwardConfig(1, 4096, 8, False, 2, 1024, True, max_registers=80), flags(), False,
         (True, True, True, False), False),
        ("bwd 1x4096+1024 rms gate-before reloaded, next tile prefetched",
         B.BackwardConfig(1, 4096, 8, False, 2, 1024, True, prefetch_step=16), flags(), False,
         (True, True, True, False), False),
        ("bwd 8x128 rms gate-after, next tile prefetched, loop in 2 stages",
         B.BackwardConfig(8, 128, 4, False, 4, prefetch_step=64, loop_stages=2), flags(nbg=True), False,
         (True, True, True, False), False),
        ("bwd 2x256 layer gate-before all grads, column sums once, affine held",
         B.BackwardConfig(2, 256, 2, False, 16, column_sums_once=True, hold_affine=True), flags(rms=False), True,
         (True, True, True, True), False),
        ("bwd 2x64+16 rms gate-after, column sums once",
         B.BackwardConfig(2, 64, 1, False, 16, 16, column_sums_once=True), flags(nbg=True), True,
         (True, True, True, True), False),
        ("bwd 1x4096+1024 rms gate-before reloaded, affine held",
         B.BackwardConfig(1, 4096, 8, False, 2, 1024, True, hold_affine=True), flags(), True,
         (True, True, True, True), False),
        ("bwd 8x128 layer gate-after all grads", B.BackwardConfig(8, 128, 2, False, 16), flags(nbg=True, rms=False),
         True, (True, True, True, True), False),
        ("bwd wide layer gate-before row sums", B.BackwardConfig(1, 4096, 16, True, 4), flags(rms=False), True,
         (True, True, True, True), True),
    ]
    for name, cfg, fl, bias, grads, row_sums in backward:
        yield name, B._bwd_kernel, B._launch_options(cfg, fl, bias, *grads, row_sums), "*bf16"
    yield ("bwd row sums", B._bwd_row_sums_kernel, (("BLOCK_N", 4096), *flags(rms=False), ("num_warps", 16)),
           "*bf16")
    yield "bwd sum of partials", B._sum_partials_kernel, B.SUM_PARTIALS_OPTIONS, "*bf16"


def every_configuration():
    """One variant per configuration the launch rules choose (custom_norm.config_sweep's enumeration)."""
    from custom_norm import config_sweep

    for (cfg, gated), group_sizes in config_sweep.forward_configs().items():
        kernel, options = F.kernel_and_options(cfg, flags(has_z=gated, rms=False), True, max(group_sizes))
        yield f"fwd {cfg} gated={gated}", kernel, options, "*bf16"
    for cfg in config_sweep.backward_configs():
        options = B._launch_options(cfg, flags(rms=False), True, True, True, True, True, cfg.wide)
        yield f"bwd {cfg}", B._bwd_kernel, options, "*bf16"


def main() -> int:
    """``--all``: also every configuration the rules choose (about a minute on two cores)."""
    failed = 0
    todo = list(variants()) + (list(every_configuration()) if "--all" in sys.argv[1:] else [])
    for name, kernel, options, data in todo:
        try:
            compile_variant(kernel, options, data)
            print(f"ok      {name}")
        except Exception as e:  # noqa: BLE001  (every variant is tried and reported)
            failed += 1
            print(f"FAILED  {name}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
    print(f"triton {triton.__version__}: {failed} of the kernel variants failed to compile for sm_90")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
