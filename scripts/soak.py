#!/usr/bin/env python
"""Soak test of norm_gated on the GPU: thousands of random problems through the op, forward and backward,
each compared with the float64 reference (issue 6).

Problems: random shapes (leading dims incl. 0 and 1, many rows, many small groups, wide groups up to 2^20
columns), dtypes (x, z, weight/bias each their own), flags (LayerNorm/RMSNorm, no gate / gate before / after,
silu/swish/sigmoid, weight/bias or not), scales 1e-3..1e3 with offsets, layouts (transposed, row-padded,
column-strided, permuted 3-D, strided/expanded weights) whose unused memory holds NaN, and eps. Each problem
checks: the forward against the float64 reference (error bounds that follow the problem's conditioning, as in
tests/test_edge_cases.py), the backward (when norm_gated::bwd exists) against autograd of the float64
reference, inputs unchanged, and every few problems bitwise determinism. The CUDA caching allocator is filled
with NaN before each problem so that an output element the kernel forgets to write shows.

Kernel variety is bounded so the run is not all compilation: problems draw from ``--configs`` kernel
configurations (flags, dtypes, a power-of-two bucket of group sizes); sizes, strides and values vary freely.

    python scripts/soak.py --problems 5000 --seconds 480 --out soak_out
    python scripts/soak.py --replay 1234 --seed 0      # re-run problem 1234 of the run with seed 0

Prints counts of problems run and failed and the first failures with their parameters; exits 1 on any
failure, 0 otherwise (also when there is no CUDA device: there is nothing to soak then).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

# Run from a checkout without installing: the repository root first on the path (workers re-run this too).
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 1 if any problem failed, else 0.")
    p.add_argument("--problems", type=int, default=5000, help="stop after this many problems (default 5000)")
    p.add_argument("--seconds", type=float, default=480.0, help="stop after this many seconds (default 480)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    p.add_argument("--device", default="cuda", help="device (default cuda; cpu runs the native path)")
    p.add_argument("--configs", type=int, default=96,
                   help="distinct kernel configurations the problems draw from (default 96)")
    p.add_argument("--max-elements", type=int, default=1 << 24, help="largest x.numel() (default 2^24)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes sharing the device, to compile kernels in parallel (default "
                        "min(8, CPUs))")
    p.add_argument("--show", type=int, default=5, help="failures printed in full (default 5)")
    p.add_argument("--out", default=None, help="directory for soak_summary.json")
    p.add_argument("--replay", type=int, default=None, metavar="INDEX",
                   help="run only problem INDEX of the run with --seed/--configs, verbosely")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ problems

# Group-size buckets: one BLOCK_N each for the fused kernel; "wide" groups all share the looped kernel.
BUCKETS = [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 512),
           (513, 1024), (1025, 2048), (2049, 4096), (4097, 8192), "wide"]
BUCKET_WEIGHTS = [2, 2, 2, 2, 3, 3, 4, 5, 5, 5, 5, 4, 4, 3, 6]
WIDE_SIZES = [8193, 12288, 16384, 32769, 65536, 65537, 98304, 131072, 262144, 1048576]
WIDE_WEIGHTS = [3, 2, 3, 2, 4, 2, 1, 2, 2, 1]
DTYPE_NAMES = ["float32", "bfloat16", "float16", "float64"]
LAYOUTS = ["contiguous", "contiguous", "contiguous", "transposed", "row-padded", "column-strided", "permuted"]
AFFINE_LAYOUTS = ["contiguous", "contiguous", "strided", "expanded"]


def make_configs(seed: int, count: int) -> list[dict]:
    """Kernel configurations: flags and dtypes, and a bucket of group sizes."""
    rng = random.Random(f"configs-{seed}")
    configs = []
    for _ in range(count):
        x_dtype = rng.choices(DTYPE_NAMES, weights=[4, 4, 2, 1])[0]
        has_z = rng.random() < 0.8
        configs.append(dict(
            x_dtype=x_dtype,
            z_dtype=rng.choice([x_dtype, x_dtype, "float32", "bfloat16"]) if has_z else None,
            affine_dtype=rng.choice([x_dtype, "float32"]),
            has_z=has_z,
            norm_before_gate=rng.random() < 0.5,
            activation=rng.choice(["silu", "swish", "sigmoid"]),
            is_rms_norm=rng.random() < 0.5,
            has_weight=rng.random() < 0.85,
            has_bias=rng.random() < 0.5,
            bucket=rng.choices(range(len(BUCKETS)), weights=BUCKET_WEIGHTS)[0],
        ))
    return configs


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def make_problem(index: int, seed: int, configs: list[dict], max_elements: int) -> dict:
    """The parameters of problem ``index``: one of the configurations, sizes, layouts, scales."""
    rng = random.Random(f"problem-{seed}-{index}")
    cfg = dict(configs[rng.randrange(len(configs))])
    bucket = BUCKETS[cfg.pop("bucket")]
    if bucket == "wide":
        gs = rng.choices(WIDE_SIZES, weights=WIDE_WEIGHTS)[0]
        ngroups = rng.choice([1, 1, 1, 2, 3])
    else:
        gs = rng.randint(*bucket)
        ngroups = rng.choice([1, 1, 1, 2, 3, 4, 7, 8, 16, 33, 64, 128])
    while ngroups > 1 and gs * ngroups > max_elements:
        ngroups //= 2
    n = gs * ngroups
    shape_kind = rng.choices(["few", "some", "many", "empty"], weights=[4, 4, 2, 1])[0]
    cap = max(1, max_elements // n)
    rows = {"few": rng.randint(1, 8), "some": rng.randint(1, 512), "many": rng.randint(512, 1 << 17),
            "empty": 0}[shape_kind]
    rows = min(rows, cap)
    # leading dims: (rows,), (a, b) with a * b == rows, or a 1-D x when rows == 1
    r = rng.random()
    if rows == 1 and r < 0.3:
        lead = ()
    elif r < 0.6 and rows > 1:
        a = rng.choice([d for d in _divisors(rows)])
        lead = (a, rows // a)
    elif rows == 0 and r < 0.8:
        lead = (rng.randint(1, 4), 0)
    else:
        lead = (rows,)
    scale = 10.0 ** rng.uniform(-3, 3)
    offset = rng.choice([0.0, 0.0, 1.0, -3.0, 10.0, 100.0])
    if cfg["x_dtype"] == "float16":
        scale = min(scale, 1e4 / (5 + abs(offset)))
    return dict(
        index=index, **cfg, shape=(*lead, n), group_size=None if ngroups == 1 and rng.random() < 0.5 else gs,
        scale=scale, offset=offset, eps=rng.choice([1e-6, 1e-6, 1e-5, 1e-3]),
        x_layout=rng.choice(LAYOUTS), z_layout=rng.choice(LAYOUTS), affine_layout=rng.choice(AFFINE_LAYOUTS),
        backward_mask=[rng.random() < 0.8 for _ in range(4)], data_seed=rng.randrange(2**31),
        check_determinism=rng.random() < 0.1,
    )


# ------------------------------------------------------------------------------------------ the checks

class Failure(Exception):
    """A check that did not hold (as opposed to an exception raised by the code under test)."""


def worker(args, worker_id: int, nworkers: int, deadline: float) -> dict:
    """Run problems ``worker_id, worker_id + nworkers, ...`` until ``deadline`` (time.time()); return counts."""
    import torch

    import custom_norm  # noqa: F401  (registers the ops)
    from custom_norm import norm_gated_reference
    from custom_norm.testing import affine_with_layout, with_layout

    device = torch.device(args.device)
    has_bwd = hasattr(torch.ops.norm_gated, "bwd") and not args.no_backward
    out_tol = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3),
               torch.bfloat16: (1.6e-2, 1.6e-2)}
    stat_tol = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 1e-6)}
    grad_tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}

    def dt(name):
        return getattr(torch, name)


    def build(p):
        gen = torch.Generator(device=device).manual_seed(p["data_seed"])
        n = p["shape"][-1]

        def randn(shape):
            return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)

        x = (randn(p["shape"]) * p["scale"] + p["offset"] * p["scale"]).to(dt(p["x_dtype"]))
        x = with_layout(x, p["x_layout"], pad=5)
        z = with_layout((randn(p["shape"]) * 2).to(dt(p["z_dtype"])), p["z_layout"], pad=5) if p["has_z"] else None
        w = b = None
        if p["has_weight"]:
            w = affine_with_layout((1 + 0.5 * randn((n,))).to(dt(p["affine_dtype"])), p["affine_layout"])
        if p["has_bias"]:
            b = affine_with_layout((0.5 * randn((n,))).to(dt(p["affine_dtype"])), p["affine_layout"])
        return x, w, b, z

    def flags(p):
        return p["eps"], p["group_size"], p["norm_before_gate"], p["is_rms_norm"], p["activation"]

    def up(t):
        return None if t is None else t.detach().double()

    def check_forward(p, x, w, b, z, result):
        """Like tests/test_edge_cases.py::assert_close_to_reference, on the device; returns max err/bound."""
        eps, gs, nbg, rms, act = flags(p)
        out, mean, rstd = result
        ref_out, ref_mean, ref_rstd = norm_gated_reference(up(x), up(w), up(b), up(z), *flags(p))
        stat_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous() or out.device != x.device:
            raise Failure(f"out: shape/dtype/strides/device {tuple(out.shape)} {out.dtype} {out.stride()} "
                          f"{out.device}")
        if rstd.dtype != stat_dtype or rstd.shape != ref_rstd.shape:
            raise Failure(f"rstd: {rstd.dtype} {tuple(rstd.shape)}, expected {stat_dtype} {tuple(ref_rstd.shape)}")
        if mean.dtype != stat_dtype or mean.shape != ref_mean.shape:
            raise Failure(f"mean: {mean.dtype} {tuple(mean.shape)}, expected {stat_dtype} {tuple(ref_mean.shape)}")
        if x.numel() == 0:
            return 0.0
        n = x.shape[-1]
        g = gs or n
        m = x.numel() // n
        u = torch.finfo(stat_dtype).eps / 2
        h = up(x).reshape(m, n)
        gate = None
        if z is not None:
            zz = up(z).reshape(m, n)
            gate = torch.sigmoid(zz) if act == "sigmoid" else torch.nn.functional.silu(zz)
            if not nbg:
                h = h * gate
        hg = h.reshape(m, n // g, g)
        rtol, atol = out_tol[x.dtype]
        want = ref_out.reshape(m, n)
        bound = atol + rtol * want.abs()
        if not rms:  # x - mean in the math dtype: u * (|h| + |mean|) per element, times rstd, |w|, |gate after|
            rstd_rows = ref_rstd.T.reshape(m, n // g, 1)
            extra = ((hg.abs() + ref_mean.T.reshape(m, n // g, 1).abs()) * rstd_rows).reshape(m, n)
            if w is not None:
                extra = extra * up(w).abs()
            if gate is not None and nbg:
                extra = extra * gate.abs()
            bound = bound + 8 * u * extra
        got = out.double().reshape(m, n)
        err = (got - want).abs()
        bad = ~(err <= bound) & ~(got.isnan() & want.isnan()) & ~(got == want)
        if bad.any():
            r, c = bad.nonzero()[0].tolist()
            raise Failure(f"out: {int(bad.sum())}/{bad.numel()} elements off; first at (row, col) ({r}, {c}): got "
                          f"{got[r, c].item()!r}, expected {want[r, c].item()!r}, allowed error "
                          f"{bound[r, c].item():.3g}")
        srtol, satol = stat_tol[stat_dtype]
        rerr = (rstd.double() - ref_rstd).abs()
        rbound = satol + srtol * ref_rstd.abs()
        if not rms:  # var from h - mean, h rounded: relative u * |h| * sqrt(var) / (var + eps)
            var = (ref_rstd.pow(-2) - eps).clamp_min(0)
            rbound = rbound + 8 * u * hg.abs().amax(-1).T * var.sqrt() * ref_rstd.pow(3)
        if not ((rerr <= rbound) | (rstd.double() == ref_rstd)).all():
            k = int((rerr - rbound).nan_to_num(float("inf")).argmax())
            raise Failure(f"rstd: off by {rerr.flatten()[k].item():.3g} (allowed {rbound.flatten()[k].item():.3g})"
                          f" at flat index (group * M + row) {k}: got {rstd.flatten()[k].item()!r}, expected "
                          f"{ref_rstd.flatten()[k].item()!r}")
        if not rms:
            mbound = satol * 10 + srtol * ref_mean.abs() + 8 * u * hg.abs().amax(-1).T
            merr = (mean.double() - ref_mean).abs()
            if not (merr <= mbound).all():
                raise Failure(f"mean: off by up to {merr.max().item():.3g}")
        return (err / bound).max().item()

    def natural_scale(p, x, w, b, z, dy):
        """Size of the terms gradients are sums of (see tests/test_fuzz.py::natural_scale)."""
        eps, gs, nbg, rms, act = flags(p)
        if x.numel() == 0:
            return 1.0
        h = up(x)
        gate_max = 1.0
        if z is not None:
            zz = up(z)
            gate = torch.sigmoid(zz) if act == "sigmoid" else torch.nn.functional.silu(zz)
            gate_max = max(1.0, gate.abs().max().item())
            if not nbg:
                h = h * gate
        rstd = norm_gated_reference(h, None, None, None, eps, gs, True, rms, "silu")[2]
        w_max = max(1.0, up(w).abs().max().item()) if w is not None else 1.0
        b_max = up(b).abs().max().item() if b is not None else 0.0
        x_term = max(1.0, h.abs().max().item() * rstd.max().item())
        return up(dy).norm().item() * max(1.0, rstd.max().item()) * w_max * gate_max * (
            math.sqrt(gs or x.shape[-1]) + x_term + b_max)

    def check_backward(p, x, w, b, z):
        """Autograd through the op (only the inputs the mask says require grad) against the float64 reference."""
        gen = torch.Generator(device=device).manual_seed(p["data_seed"] + 1)
        dy = torch.randn(x.shape, generator=gen, device=device, dtype=torch.float32).to(x.dtype)
        need_x, need_z, need_w, need_b = p["backward_mask"]
        leaves = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in ((x, need_x), (w, need_w), (b, need_b), (z, need_z))]
        if not any(t is not None and t.requires_grad for t in leaves):
            leaves[0].requires_grad_(True)
        poison()
        out = torch.ops.norm_gated.fwd(*leaves, *flags(p))[0]
        out.backward(dy)
        ref_leaves = [None if t is None else t.detach().double().clone().requires_grad_(t.requires_grad)
                      for t in leaves]
        norm_gated_reference(*ref_leaves, *flags(p))[0].backward(up(dy))
        natural = natural_scale(p, x, w, b, z, dy)
        compute_tol = grad_tol[torch.float64 if x.dtype == torch.float64 else torch.float32]
        worst = 0.0
        for name, leaf, ref in zip(("dx", "dweight", "dbias", "dz"), leaves, ref_leaves, strict=True):
            if leaf is None or not leaf.requires_grad:
                continue
            g = leaf.grad
            if g is None:
                raise Failure(f"{name}: missing")
            if g.dtype != leaf.dtype or g.shape != leaf.shape:
                raise Failure(f"{name}: {g.dtype} {tuple(g.shape)} for a {leaf.dtype} {tuple(leaf.shape)} input")
            if not g.isfinite().all():
                raise Failure(f"{name}: not finite")
            if g.numel() == 0:
                continue
            tol = max(grad_tol[leaf.dtype], compute_tol)
            err = (g.double() - ref.grad).norm().item() / max(ref.grad.norm().item(), 1e-3 * natural, 1e-300)
            if not err <= tol:
                raise Failure(f"{name}: relative error {err:.3g} > {tol:.1g}")
            worst = max(worst, err / tol)
        return worst

    def poison():
        """Fill free blocks of the caching allocator with NaN: an output element left unwritten shows."""
        if device.type == "cuda":
            torch.empty(1 << 24, device=device).fill_(float("nan"))

    def run_problem(p, state):
        state["stage"] = "build"
        x, w, b, z = build(p)
        saved = [None if t is None else t.clone() for t in (x, w, b, z)]
        state["stage"] = "forward"
        poison()
        result = torch.ops.norm_gated.fwd(x, w, b, z, *flags(p))
        fwd_ratio = check_forward(p, x, w, b, z, result)
        if p["check_determinism"]:
            state["stage"] = "determinism"
            again = torch.ops.norm_gated.fwd(x, w, b, z, *flags(p))
            for name, a, c in zip(("out", "mean", "rstd"), result, again, strict=True):
                if not (torch.equal(a.isnan(), c.isnan()) and torch.equal(a.nan_to_num(), c.nan_to_num())):
                    raise Failure(f"forward not deterministic: {name} differs between two runs")
        bwd_ratio = None
        if has_bwd:
            state["stage"] = "backward"
            bwd_ratio = check_backward(p, x, w, b, z)
        state["stage"] = "inputs"
        for name, before, t in zip(("x", "weight", "bias", "z"), saved, (x, w, b, z), strict=True):
            if before is not None and not torch.equal(before.nan_to_num(), t.nan_to_num()):
                raise Failure(f"{name} was modified")
        return fwd_ratio, bwd_ratio

    configs = make_configs(args.seed, args.configs)
    indices = [args.replay] if args.replay is not None else range(worker_id, args.problems, nworkers)
    counts = dict(problems=0, passed=0, failed=0, forward_checked=0, backward_checked=0, determinism_checked=0,
                  empty=0, wide=0, over_64k_columns=0)
    by_stage, failures, worst = {}, [], {}
    aborted = None
    last_report = time.time()
    for i in indices:
        if args.replay is None and time.time() > deadline:
            break
        p = make_problem(i, args.seed, configs, args.max_elements)
        if args.replay is not None:
            print(f"problem {i}: {describe(p)}")
        counts["problems"] += 1
        gs = p["group_size"] or p["shape"][-1]
        counts["empty"] += math.prod(p["shape"]) == 0
        counts["wide"] += gs > 8192
        counts["over_64k_columns"] += gs > 65536
        state = {"stage": "build"}
        try:
            fwd_ratio, bwd_ratio = run_problem(p, state)
            counts["passed"] += 1
            counts["forward_checked"] += 1
            counts["backward_checked"] += bwd_ratio is not None
            counts["determinism_checked"] += p["check_determinism"]
            wr = worst.setdefault(p["x_dtype"], {"forward": 0.0, "backward": 0.0})
            wr["forward"] = max(wr["forward"], fwd_ratio)
            if bwd_ratio is not None:
                wr["backward"] = max(wr["backward"], bwd_ratio)
        except Exception as e:  # every failure is recorded with the problem's parameters
            counts["failed"] += 1
            by_stage[state["stage"]] = by_stage.get(state["stage"], 0) + 1
            msg = str(e) if isinstance(e, Failure) else f"{type(e).__name__}: {e}"
            rec = dict(index=i, stage=state["stage"], error=msg[:2000], params=p)
            if not isinstance(e, Failure):
                rec["traceback"] = traceback.format_exc()[-4000:]
            failures.append(rec)
            if args.replay is not None:
                print(format_failure(rec, args))
            text = msg.lower()
            if device.type == "cuda" and any(s in text for s in ("cuda error", "illegal memory", "misaligned",
                                                                  "device-side assert", "unspecified launch")):
                aborted = f"worker {worker_id}: CUDA error at problem {i}; the context is unusable, stopped"
                break
        if worker_id == 0 and time.time() - last_report > 30:
            last_report = time.time()
            print(f"  [worker 0: {counts['problems']} problems, {counts['failed']} failed]", flush=True)
    return dict(counts=counts, by_stage=by_stage, failures=failures[:200], worst=worst, aborted=aborted)


def describe(p: dict) -> str:
    keys = ["shape", "group_size", "x_dtype", "z_dtype", "affine_dtype", "is_rms_norm", "has_z", "norm_before_gate",
            "activation", "has_weight", "has_bias", "scale", "offset", "eps", "x_layout", "z_layout", "affine_layout",
            "backward_mask", "check_determinism"]
    return ", ".join(f"{k}={p[k]!r}" for k in keys)


def format_failure(rec: dict, args) -> str:
    text = (f"\nFAILED problem {rec['index']} ({rec['stage']}): {rec['error']}\n  {describe(rec['params'])}\n"
            f"  replay: python scripts/soak.py --replay {rec['index']} --seed {args.seed} --configs {args.configs} "
            f"--max-elements {args.max_elements} --device {args.device}")
    if "traceback" in rec:
        text += "\n" + rec["traceback"]
    return text


def _worker_entry(args, worker_id, nworkers, deadline):
    try:
        return worker(args, worker_id, nworkers, deadline)
    except BaseException:  # a crash of the worker itself: report it as a failure of the run
        return dict(counts=dict(problems=0, passed=0, failed=1), by_stage={"worker": 1}, worst={},
                    failures=[dict(index=-1, stage="worker", error=traceback.format_exc()[-4000:],
                                   params={})], aborted=f"worker {worker_id} crashed")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("soak.py: no CUDA device here, nothing to soak (this script is for the GPU; "
              "--device cpu exercises the native path).")
        return 0
    import triton

    import custom_norm  # noqa: F401

    has_bwd = hasattr(torch.ops.norm_gated, "bwd") and not args.no_backward
    dev_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    nworkers = 1 if args.replay is not None else max(1, args.workers)
    print(f"soak: {dev_name}, torch {torch.__version__}, triton {triton.__version__}, seed {args.seed}, "
          f"{args.configs} kernel configurations, {nworkers} worker process(es), "
          f"backward {'on' if has_bwd else 'off (norm_gated::bwd absent)' if not args.no_backward else 'off'}",
          flush=True)
    start = time.time()
    deadline = start + args.seconds
    if nworkers == 1:
        results = [_worker_entry(args, 0, 1, deadline)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # Workers share the GPU and Triton's on-disk cache: kernels compile in parallel, each once.
        with ProcessPoolExecutor(nworkers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_worker_entry, args, k, nworkers, deadline) for k in range(nworkers)]
            results = [f.result() for f in futures]
    elapsed = time.time() - start

    counts, by_stage, worst, failures, aborted = {}, {}, {}, [], []
    for r in results:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in r["by_stage"].items():
            by_stage[k] = by_stage.get(k, 0) + v
        for k, v in r["worst"].items():
            w = worst.setdefault(k, {"forward": 0.0, "backward": 0.0})
            w["forward"] = max(w["forward"], v["forward"])
            w["backward"] = max(w["backward"], v["backward"])
        failures += r["failures"]
        if r["aborted"]:
            aborted.append(r["aborted"])
    failures.sort(key=lambda f: f["index"])
    if args.replay is None:
        for rec in failures[:args.show]:
            print(format_failure(rec, args))
    print(f"\nsoak: {counts.get('problems', 0)} problems run in {elapsed:.0f} s: {counts.get('passed', 0)} passed, "
          f"{counts.get('failed', 0)} FAILED (forward checked {counts.get('forward_checked', 0)}, backward "
          f"{counts.get('backward_checked', 0)}, determinism {counts.get('determinism_checked', 0)})")
    print(f"  coverage: {counts.get('empty', 0)} empty problems, {counts.get('wide', 0)} with groups over 8192 "
          f"columns, {counts.get('over_64k_columns', 0)} over 65536")
    if by_stage:
        print(f"  failures by stage: {by_stage}")
    for a in aborted:
        print(f"  {a}")
    if worst:
        print("  worst error / allowed error, by x dtype: " + ", ".join(
            f"{k} fwd {v['forward']:.2f} bwd {v['backward']:.2f}" for k, v in sorted(worst.items())))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        summary = dict(device=dev_name, torch=torch.__version__, triton=triton.__version__, seed=args.seed,
                       configs=args.configs, workers=nworkers, max_elements=args.max_elements, backward=has_bwd,
                       elapsed_s=round(elapsed, 1), **counts, failures_by_stage=by_stage, aborted=aborted,
                       worst_ratio=worst, failures=failures[:100])
        path = os.path.join(args.out, "soak_summary.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=1, default=str)
        print(f"  summary: {path}")
    return 1 if counts.get("failed", 0) or aborted else 0


if __name__ == "__main__":
    sys.exit(main())
