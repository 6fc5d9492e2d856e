"""Check the Triton kernels on this GPU with this Triton: every tile configuration the launchers' rules can
choose, under every set of flags that changes the compiled code's data flow; report each wrong one.

Each (configuration, flags) pair is its own compiled kernel with layouts the compiler picks, so a compiler
fault can hit one pair and not its neighbours: Triton 3.6 miscompiled one such variant on an H200 (README,
known limits). Forward: out, mean and rstd against the float64 reference; backward: dx, dz, dweight, dbias
against the float64 reference's gradients. Kernels compile in parallel worker processes (about 3 minutes
for bf16 on an H200 with 15 workers). tests/test_configs.py runs one flag set per configuration.

    python -m custom_norm.config_sweep [--workers 14] [--out DIR] [--only forward|backward] [--dtypes bfloat16]
                                       [--wide-only]

Exit status 1 if any kernel was wrong.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import zlib
from pathlib import Path

ROWS = [1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 64, 128, 256, 512, 1024, 2048]
WIDE_GROUPS = [12288, 40000]  # past the backward's and the forward's fused limits
# (has_z, norm_before_gate, is_rms_norm, has_affine): gate none / after the norm / before it, both norms
FLAG_SETS = [(z, nbg, rms, aff) for (z, nbg), rms, aff in itertools.product(
    [(False, True), (True, True), (True, False)], [False, True], [True, False])]


def _variants(cfg, sizes):
    """Problems per configuration, as (group_size, ngroups, rows). Triton compiles separate variants for
    sizes and strides divisible by 16 (vectorized loads and stores, other layouts) and for integers equal to
    1 (M == 1, ngroups == 1: then every column index is known to start at 0, and the weight loads vectorize
    whatever the group size); masks are runtime. So: the smallest group size over two groups and alone
    (masked, usually unaligned: the Triton 3.6 fault was 280 columns, one group); a 16-aligned size whose
    last tile is partly masked, as the only group; the largest aligned size over two groups (full tiles);
    each over three programs' rows, the last one masked; and for one-row tiles the partial aligned group
    alone in one row (decode). Two groups run the forward's fused tiles on its 2-D grid, one group on the
    1-D grid."""
    aligned = sorted(gs for gs in sizes if gs % 16 == 0)
    full = max(aligned or sizes)
    partial = next((gs for gs in reversed(aligned) if gs < max(sizes)), full)
    rows = 2 * cfg.block_m + 1
    variants = [(min(sizes), 2, rows), (min(sizes), 1, rows)]
    if partial != min(sizes):
        variants.append((partial, 1, rows))
    if full != partial:
        variants.append((full, 2, rows))
    if cfg.block_m == 1:
        variants.append((partial, 1, 1))
    return variants


def forward_configs() -> dict[tuple, set[int]]:
    """Each forward configuration the rule chooses, keyed ``(config, gated)``, with the group sizes that
    select it (rows from ROWS, bf16 and float32 element sizes; sizes up to the fused limit and past it)."""
    from .kernels import forward as F
    sizes = {}
    for gs in [*range(1, F.MAX_FUSED_BLOCK + 1), *WIDE_GROUPS]:
        # and a problem large enough to stream from DRAM (the two-pass rule for ungated RMSNorm)
        for rows in [*ROWS, -(-F.TWO_PASS_MIN_ELEMENTS // gs)]:
            for gated, gate_after_norm, rms in ((True, False, False), (True, True, False), (True, False, True),
                                                (True, True, True), (False, False, False), (False, False, True)):
                for element_size in (2, 4):  # bf16 / float16, float32 (float64 takes the 2-byte rule)
                    cfg = F.forward_config(gs, rows, gated, gate_after_norm, rms, 1, element_size)
                    sizes.setdefault((cfg, gated), set()).add(gs)
    return sizes


def backward_configs() -> dict:
    """Each backward configuration the rule chooses, with the group sizes that select it."""
    from .kernels import backward as B
    sizes = {}
    for gs in [*range(1, B.MAX_FUSED_BLOCK + 1), *WIDE_GROUPS]:
        for rows in ROWS:
            sizes.setdefault(B.backward_config(gs, rows), set()).add(gs)
    return sizes


def forward_tasks(dtypes: list[str]) -> list[tuple]:
    return [("forward", cfg, gs, ngroups, rows, flags, dt) for (cfg, gated), gss in forward_configs().items()
            for gs, ngroups, rows in _variants(cfg, gss) for flags in FLAG_SETS if flags[0] == gated
            for dt in dtypes]


def backward_tasks(dtypes: list[str]) -> list[tuple]:
    return [("backward", cfg, gs, ngroups, rows, flags, dt) for cfg, gss in backward_configs().items()
            for gs, ngroups, rows in _variants(cfg, gss) for flags in FLAG_SETS for dt in dtypes]


def run_task(task, device: str = "cuda") -> dict:
    """Run one (kind, config, group size, groups, rows, flags, dtype) problem; ``{"ok", "worst", "errs"}``.
    ``device="cpu"`` runs it in Triton's interpreter (TRITON_INTERPRET=1 set before the kernels load)."""
    import torch

    from .kernels import backward as B
    from .kernels import forward as F
    from .reference import norm_gated_reference

    kind, cfg, gs, ngroups, rows, (has_z, nbg, rms, affine), dtype_name = task
    dtype = getattr(torch, dtype_name)
    dev = device
    gen = torch.Generator(device=dev).manual_seed(zlib.crc32(describe(task).encode()))
    n = ngroups * gs
    x = (torch.randn(rows, n, device=dev, generator=gen) + 3.0).to(dtype)
    z = torch.randn(rows, n, device=dev, generator=gen).to(dtype) if has_z else None
    w = (1 + 0.5 * torch.randn(n, device=dev, generator=gen)).to(dtype) if affine else None
    b = (0.5 * torch.randn(n, device=dev, generator=gen)).to(dtype) if affine else None
    act = "sigmoid" if rms else "silu"
    eps = 0.1  # groups of one or two values stay well conditioned

    def up(t, grad=False):
        return None if t is None else t.detach().double().requires_grad_(grad)

    torch.empty(1 << 24, device=dev).fill_(float("nan"))
    try:
        if kind == "forward":
            out, mean, rstd = F.norm_gated_fwd_triton(x, w, b, z, eps, gs, nbg, rms, act, config=cfg)
            ro, rm, rr = norm_gated_reference(up(x), up(w), up(b), up(z), eps, gs, nbg, rms, act)
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
            errs = {"out": ((out.double() - ro).abs() / (1 + ro.abs())).max().item(),
                    "rstd": ((rstd.double() - rr).abs() / rr.abs()).max().item()}
            if not rms:
                errs["mean"] = ((mean.double() - rm).abs() / (1 + rm.abs())).max().item()
            for k in errs:
                errs[k] /= tol if k == "out" else 1e-4
        else:
            _, mean, rstd = F.norm_gated_fwd_triton(x, w, b, z, eps, gs, nbg, rms, act)
            dy = torch.randn(rows, n, device=dev, generator=gen).to(dtype)
            torch.empty(1 << 24, device=dev).fill_(float("nan"))
            got = B.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, gs, nbg, rms, act, [True] * 4, config=cfg)
            leaves = [up(t, True) for t in (x, z, w, b)]
            norm_gated_reference(leaves[0], leaves[2], leaves[3], leaves[1], eps, gs, nbg, rms, act)[0].backward(
                dy.double())
            tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
            errs = {}
            for name, g, leaf in zip(("dx", "dz", "dweight", "dbias"), got, leaves, strict=True):
                if leaf is None:
                    continue
                ref = leaf.grad
                scale = max(ref.norm().item(), 1e-6 * dy.double().norm().item(), 1e-30)
                errs[name] = (g.double() - ref).norm().item() / scale / tol
        worst = max(errs.values())
        ok = worst <= 1.0 and all(v == v for v in errs.values())
        return dict(ok=ok, worst=worst, errs=errs)
    except Exception as e:  # noqa: BLE001  (reported, not raised: one bad kernel must not stop the sweep)
        return dict(ok=False, worst=float("inf"), errs={}, error=f"{type(e).__name__}: {e}"[:500])


def describe(task):
    kind, cfg, gs, ngroups, rows, (has_z, nbg, rms, affine), dt = task
    gate = "nogate" if not has_z else ("gate-after" if nbg else "gate-before")
    tile = f"{cfg.block_m}x{cfg.block_n}" + (f"+{cfg.block_tail}" if getattr(cfg, "block_tail", 0) else "")
    return (f"{kind} {rows}x g{gs}x{ngroups} {tile} w{cfg.num_warps}{' wide' if cfg.wide else ''} "
            f"{'rms' if rms else 'layer'} {gate} {'affine' if affine else 'plain'} {dt}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=["forward", "backward"], default=None)
    ap.add_argument("--dtypes", default="bfloat16,float32", help="x dtypes, comma-separated")
    ap.add_argument("--split-several-rows", action="store_true",
                    help="also the forward configurations the rule would choose if tiles of several rows could "
                         "split a group into a head and a tail (kernels.forward.SPLIT_SEVERAL_ROWS)")
    ap.add_argument("--wide-only", action="store_true",
                    help="only the configurations of the wide kernels (looped, split)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("custom_norm.config_sweep: needs a CUDA GPU")
        return 0
    tasks = []
    if args.only != "backward":
        tasks += forward_tasks(args.dtypes.split(","))
        if args.split_several_rows:
            from .kernels import forward as F

            F.SPLIT_SEVERAL_ROWS = True
            try:
                seen = set(tasks)
                tasks += [t for t in forward_tasks(args.dtypes.split(",")) if t not in seen]
            finally:
                F.SPLIT_SEVERAL_ROWS = False
    if args.only != "forward":
        tasks += backward_tasks(args.dtypes.split(","))
    if args.wide_only:
        tasks = [t for t in tasks if t[1].wide]
    start = time.time()
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        # by its package name, not __main__'s (python -m): worker processes import it like any module
        from custom_norm.config_sweep import run_task as task_fn

        results = list(pool.map(task_fn, tasks, chunksize=4))
    bad = [(t, r) for t, r in zip(tasks, results, strict=True) if not r["ok"]]
    print(f"config_sweep: {len(tasks)} (configuration, flags, dtype) kernels in {time.time() - start:.0f} s, "
          f"{len(bad)} wrong")
    for t, r in bad:
        errs = " ".join(f"{k}={v:.3g}" for k, v in r["errs"].items())
        print(f"  WRONG {describe(t)}: {errs} {r.get('error', '')}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "config_sweep.json", "w") as f:
            json.dump([dict(task=describe(t), **r) for t, r in zip(tasks, results, strict=True)], f, indent=0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
