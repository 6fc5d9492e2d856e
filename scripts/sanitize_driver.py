#!/usr/bin/env python
"""Drive the Triton kernels of norm_gated over edge shapes on CUDA, for compute-sanitizer (scripts/sanitize.sh).

Edge shapes: M = 1 and N = 1, odd and prime N, masked column tails, masked row tails (rows not a multiple of
the tile), several and many small groups, group_size = 1, the looped wide-group kernel on a group just over
the fused threshold (one masked column in its last chunk) and, with the thresholds made small, on many chunk
and tail combinations; non-contiguous rows (row-padded views ending exactly at their allocation's end, so an
overrun leaves it), transposed and column-strided inputs, stride-0 rows; every dtype; mixed dtypes; the flag
combinations; M = 0 (no launch). Each call's result is checked against the float64 reference (on the CPU, to
keep the sanitized launches to the kernels under test), so the driver also fails on a wrong answer.

    python scripts/sanitize_driver.py --part all     # fwd, bwd (when norm_gated::bwd exists) or all
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root first on the path (workers re-run this too).
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["fwd", "bwd", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer flag combinations per shape")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); cpu runs the kernels in Triton's interpreter (TRITON_INTERPRET=1 is "
                             "set), to try the driver without a GPU")
    args = parser.parse_args(argv)

    if args.device == "cpu":
        import os

        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        print("sanitize_driver.py: needs a CUDA GPU (or --device cpu for Triton's interpreter)")
        return 2
    import custom_norm  # noqa: F401
    import custom_norm.kernels.forward as fwd_mod
    from custom_norm import norm_gated_reference
    from custom_norm.native import norm_gated_fwd_native

    try:
        import custom_norm.kernels.backward as bwd_mod
    except ImportError:
        bwd_mod = None
    has_bwd = bwd_mod is not None and hasattr(bwd_mod, "norm_gated_bwd_triton")
    run_fwd = args.part in ("fwd", "all")
    run_bwd = args.part in ("bwd", "all") and has_bwd
    if args.part == "bwd" and not has_bwd:
        print("sanitize_driver.py: no Triton backward (custom_norm.kernels.backward) yet; nothing to do")
        return 0

    dev = args.device

    def sync():
        if dev != "cpu":
            torch.cuda.synchronize()
    torch.manual_seed(0)
    tol = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}

    def randn(shape, dtype, layout="contiguous"):
        """Random values with the given layout; row-padded / column-strided views end at the buffer's end."""
        t = torch.randn(shape, device=dev, dtype=torch.float32).to(dtype)
        if layout == "transposed" and t.dim() >= 2:
            return t.mT.contiguous().mT
        if layout == "row-padded":
            buf = torch.randn((*shape[:-1], shape[-1] + 7), device=dev, dtype=torch.float32).to(dtype)
            buf[..., 7:] = t
            return buf[..., 7:]
        if layout == "column-strided":
            buf = torch.randn((*shape[:-1], 2 * shape[-1]), device=dev, dtype=torch.float32).to(dtype)
            buf[..., 1::2] = t
            return buf[..., 1::2]
        if layout == "stride0-rows" and t.dim() >= 2:
            return t[..., :1, :].expand(shape)
        return t

    # (shape, group_size, x dtype, z dtype, affine dtype, x layout, z layout)
    cases = [
        ((1, 1), None, torch.float32, torch.float32, torch.float32, "contiguous", "contiguous"),
        ((3, 1), 1, torch.bfloat16, torch.bfloat16, torch.float32, "contiguous", "contiguous"),
        ((1, 97), None, torch.float16, torch.float16, torch.float16, "contiguous", "contiguous"),
        ((5, 251), None, torch.float32, torch.bfloat16, torch.float32, "row-padded", "contiguous"),
        ((37, 100), None, torch.bfloat16, torch.bfloat16, torch.float32, "contiguous", "transposed"),
        ((1, 130), 13, torch.float32, torch.float32, torch.float32, "contiguous", "contiguous"),
        ((6, 96), 32, torch.float64, torch.float64, torch.float64, "contiguous", "contiguous"),
        ((3, 2, 48), 12, torch.float16, torch.float32, torch.float32, "row-padded", "row-padded"),
        ((4, 512), 2, torch.bfloat16, torch.bfloat16, torch.bfloat16, "contiguous", "contiguous"),
        ((7, 16), 1, torch.float32, torch.float32, torch.float32, "transposed", "contiguous"),
        ((1037, 64), 16, torch.bfloat16, torch.bfloat16, torch.float32, "row-padded", "contiguous"),
        ((129, 33), 11, torch.float32, torch.float16, torch.float32, "column-strided", "contiguous"),
        ((9, 256), 64, torch.float32, torch.float32, torch.float32, "stride0-rows", "contiguous"),
        ((2, 8193), None, torch.float32, torch.float32, torch.float32, "row-padded", "contiguous"),
        ((3, 12288), None, torch.bfloat16, torch.bfloat16, torch.float32, "contiguous", "row-padded"),
        ((2, 3 * 8200), 8200, torch.float16, torch.float16, torch.float32, "contiguous", "contiguous"),
        ((1, 65537), None, torch.float64, torch.float64, torch.float64, "contiguous", "contiguous"),
        ((0, 64), 16, torch.float32, torch.float32, torch.float32, "contiguous", "contiguous"),
    ]
    # Groups one column over the fused/looped thresholds (forward, backward): one masked column in the last chunk.
    for limit in sorted({fwd_mod.MAX_FUSED_BLOCK, getattr(bwd_mod, "MAX_FUSED_BLOCK", 8192)}):
        cases.append(((2, limit + 1), None, torch.bfloat16, torch.bfloat16, torch.float32, "row-padded", "contiguous"))
    # Cases for the wide kernel with its thresholds made small: many chunk / tail / group combinations.
    small_wide_cases = [
        ((3, 97), None, torch.float32, torch.float32, torch.float32, "row-padded", "contiguous"),
        ((2, 250), 125, torch.bfloat16, torch.bfloat16, torch.float32, "contiguous", "transposed"),
        ((4, 64), None, torch.float16, torch.float16, torch.float16, "contiguous", "contiguous"),
        ((2, 3, 99), 33, torch.float64, torch.float64, torch.float64, "contiguous", "contiguous"),
    ]
    # (has_z, norm_before_gate, is_rms_norm, activation, has_weight, has_bias)
    flag_sets = [
        (True, True, False, "silu", True, True),
        (True, False, True, "sigmoid", True, False),
        (False, True, True, "silu", False, False),
        (True, False, False, "swish", False, True),
    ]
    if args.quick:
        flag_sets = flag_sets[:2]
    masks = [[True, True, True, True], [True, False, False, False], [False, True, True, False]]

    launches = {"fwd": 0, "bwd": 0}
    errors = []

    def up(t):
        return None if t is None else t.detach().cpu().double()

    def check(name, got, want, dtype):
        got = got.detach().cpu().double()
        err = (got - want).abs().max().item() if got.numel() else 0.0
        scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
        if not err <= tol[dtype] * scale:  # NaN fails too
            errors.append(f"{name}: max error {err:.3g} (scale {scale:.3g})")

    def run_case(case, tag):
        shape, gs, xdt, zdt, adt, xl, zl = case
        n = shape[-1]
        for has_z, nbg, rms, act, has_w, has_b in flag_sets:
            x = randn(shape, xdt, xl)
            z = randn(shape, zdt, zl) if has_z else None
            w = (1 + 0.5 * torch.randn(n, device=dev)).to(adt) if has_w else None
            b = (0.5 * torch.randn(n, device=dev)).to(adt) if has_b else None
            label = f"{tag} {shape} gs={gs} {xdt} rms={rms} z={has_z} nbg={nbg} w={has_w} b={has_b} {xl}/{zl}"
            # the backward-only run takes its statistics from the native forward (torch's own kernels), so that
            # the sanitizer's findings in that run belong to the backward kernels alone
            forward = fwd_mod.norm_gated_fwd_triton if run_fwd else norm_gated_fwd_native
            out, mean, rstd = forward(x, w, b, z, 1e-6, gs, nbg, rms, act)
            launches["fwd"] += forward is fwd_mod.norm_gated_fwd_triton
            sync()
            if run_fwd:
                ref = norm_gated_reference(up(x), up(w), up(b), up(z), 1e-6, gs, nbg, rms, act)
                check(f"{label}: out", out, ref[0], xdt)
                check(f"{label}: rstd", rstd, ref[2], torch.float32 if xdt != torch.float64 else xdt)
            if not run_bwd:
                continue
            dy = randn(shape, xdt)
            leaves = [None if t is None else up(t).requires_grad_(True) for t in (x, w, b, z)]
            norm_gated_reference(*leaves, 1e-6, gs, nbg, rms, act)[0].backward(up(dy))
            for mask in masks:
                grads = bwd_mod.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, gs, nbg, rms, act, mask)
                launches["bwd"] += 1
                sync()
                for gname, g, leaf, wanted, dtype in zip(
                        ("dx", "dz", "dweight", "dbias"), grads, (leaves[0], leaves[3], leaves[1], leaves[2]), mask,
                        (xdt, zdt, adt, adt), strict=True):
                    if leaf is None or not wanted:
                        if g is not None:
                            errors.append(f"{label} mask={mask}: {gname} should be None")
                        continue
                    check(f"{label} mask={mask}: {gname}", g, leaf.grad, dtype)

    for case in cases:
        run_case(case, "")
    saved = (fwd_mod.MAX_FUSED_BLOCK, fwd_mod.WIDE_BLOCK, fwd_mod.SPLIT_BLOCK)
    bwd_saved = (getattr(bwd_mod, "MAX_FUSED_BLOCK", None), getattr(bwd_mod, "WIDE_BLOCK", None)) if bwd_mod else None
    try:
        fwd_mod.MAX_FUSED_BLOCK, fwd_mod.WIDE_BLOCK, fwd_mod.SPLIT_BLOCK = 32, 16, 16
        if bwd_mod is not None and bwd_saved[0] is not None:
            bwd_mod.MAX_FUSED_BLOCK, bwd_mod.WIDE_BLOCK = 32, 16
        for case in small_wide_cases:
            run_case(case, "small-wide")
    finally:
        fwd_mod.MAX_FUSED_BLOCK, fwd_mod.WIDE_BLOCK, fwd_mod.SPLIT_BLOCK = saved
        if bwd_mod is not None and bwd_saved[0] is not None:
            bwd_mod.MAX_FUSED_BLOCK, bwd_mod.WIDE_BLOCK = bwd_saved
    sync()

    checked = [p for p, on in (("forward", run_fwd), ("backward", run_bwd)) if on]
    print(f"sanitize_driver: {launches['fwd']} forward and {launches['bwd']} backward launcher calls on "
          f"{len(cases) + len(small_wide_cases)} edge shapes x {len(flag_sets)} flag sets; checked "
          f"{' and '.join(checked)} against the reference: {len(errors)} wrong")
    for e in errors[:20]:
        print("  WRONG:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
