"""Sweep the forward kernel's tile shapes and warps on the GPU; prints the best config per shape.

Evidence for ``forward_config`` in custom_norm/kernels/forward.py (see BENCHMARKS.md's notes).
Usage: python3 scripts/tune_forward.py [--out DIR] [--only 5120] [--rows 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import replace

import torch
import triton
from triton.testing import do_bench_cudagraph

import custom_norm.kernels.forward as fwd


def copy_bandwidth() -> float:
    a = torch.randn(1 << 28, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), return_mode="median")
    return 2 * a.numel() * a.element_size() / ms / 1e6  # GB/s, bytes read + written


# (N, group_size, dtype, variant): variant picks the flags of the cases
SHAPES = [
    (128, None, torch.bfloat16, "rms-gate-after"),
    (128, None, torch.bfloat16, "rms-gate-before"),
    (128, None, torch.bfloat16, "rms-sigmoid-gate-after"),  # Kimi-Linear's
    (4096, None, torch.bfloat16, "layer-bias-nogate"),
    (5120, None, torch.bfloat16, "rms-gate-before"),
    (5120, None, torch.float32, "rms-gate-before"),
    (8192, 1024, torch.bfloat16, "rms-gate-before"),
    # groups that are not a power of two, in tiles of several rows: padded, or head + tail (768 = 512 + 256,
    # 640 = 512 + 128); evidence for forward.SPLIT_SEVERAL_ROWS
    (6144, 768, torch.bfloat16, "rms-gate-before"),
    (5120, 640, torch.bfloat16, "layer-bias-nogate"),
    (8192, None, torch.bfloat16, "rms-nogate"),
    (8192, None, torch.bfloat16, "layer-bias-nogate"),
    (4096, None, torch.bfloat16, "rms-nogate"),
    (16384, None, torch.bfloat16, "rms-nogate"),
    (2560, None, torch.bfloat16, "rms-nogate"),  # groups that are not a power of two (session 12's two chunks)
    (3072, None, torch.bfloat16, "rms-nogate"),
    (5120, None, torch.bfloat16, "rms-nogate"),
    (6144, None, torch.bfloat16, "rms-nogate"),
    (4096, None, torch.float32, "rms-nogate"),
    (8192, None, torch.float32, "rms-nogate"),
    # several groups of up to 1024 columns without a gate, in tiles of several rows (session 6: 640-column
    # LayerNorm groups ran at 64 % of copy bandwidth with the default 4 warps, 92 % with 1)
    (8192, 1024, torch.bfloat16, "layer-bias-nogate"),
    (8192, 512, torch.bfloat16, "layer-bias-nogate"),
    (8192, 256, torch.bfloat16, "rms-nogate"),
    (8192, 1024, torch.bfloat16, "rms-gate-after"),
    (32768, None, torch.bfloat16, "rms-gate-after"),
    (65536, None, torch.bfloat16, "rms-gate-after"),
    # more groups past the one-pass limit, for the looped kernel's rule (session 7)
    (65536, None, torch.bfloat16, "rms-nogate"),
    (65536, None, torch.bfloat16, "layer-bias-nogate"),
    (65536, None, torch.bfloat16, "rms-gate-before"),
    (49152, None, torch.bfloat16, "layer-bias-nogate"),
    (131072, None, torch.bfloat16, "rms-gate-after"),
    (131072, 65536, torch.bfloat16, "rms-gate-before"),
    # four wide groups a row: the looped kernel runs a program per (row, group), the split kernel's rule counts rows
    (262144, 65536, torch.bfloat16, "rms-gate-after"),
    (262144, 65536, torch.bfloat16, "layer-bias-nogate"),
    (131072, 65536, torch.bfloat16, "rms-gate-after"),
    (40000, None, torch.bfloat16, "layer-bias-gate-before"),  # a partial last chunk (--prefetch's output check)
    # bench.py --suite models' widths short of the fastest peer (session 13): Mamba2-130m, -780m and Bamba-9b
    (1536, None, torch.bfloat16, "rms-gate-before"),
    (3072, None, torch.bfloat16, "rms-gate-before"),
    (8192, None, torch.bfloat16, "rms-gate-before"),
    # more groups split into a head and a tail: how many warps such a tile wants (session 13)
    (1280, None, torch.bfloat16, "rms-gate-before"),
    (2560, None, torch.bfloat16, "rms-gate-before"),
    (6144, None, torch.bfloat16, "rms-gate-before"),
    (12288, None, torch.bfloat16, "rms-gate-before"),
    (3072, None, torch.bfloat16, "rms-gate-after"),
    (8192, None, torch.bfloat16, "rms-gate-after"),
    # how many elements a thread gated tiles want away from 2^26 elements (session 14): narrow groups at 8
    # and 16, one-row groups of 8192 and 16384 at 8, 16 and 32
    (8192, 256, torch.bfloat16, "rms-gate-after"),
    (8192, 512, torch.bfloat16, "rms-gate-before"),
    (16384, None, torch.bfloat16, "rms-gate-before"),
    (16384, None, torch.bfloat16, "rms-gate-after"),
    (8192, None, torch.bfloat16, "layer-bias-gate-before"),
    (8192, None, torch.bfloat16, "layer-gate-after"),
    (16384, None, torch.bfloat16, "layer-bias-gate-before"),
    (8192, None, torch.float32, "rms-gate-before"),
    (128, None, torch.bfloat16, "layer-gate-after"),
    (64, None, torch.bfloat16, "rms-gate-after"),
    (8192, 32, torch.bfloat16, "rms-gate-before"),
    (12288, None, torch.bfloat16, "layer-bias-gate-before"),
    (128, None, torch.float32, "rms-gate-after"),
    (8192, None, torch.float32, "rms-gate-after"),
    (8192, None, torch.float32, "layer-bias-gate-before"),
    (6144, None, torch.float32, "rms-gate-before"),
    # whether float32 gated tiles want fewer elements a thread than bf16's at other widths (session 15)
    (4096, None, torch.float32, "rms-gate-before"),
    (4096, None, torch.bfloat16, "rms-gate-before"),
    (2048, None, torch.float32, "rms-gate-before"),
    (2048, None, torch.bfloat16, "rms-gate-before"),
    (1024, None, torch.float32, "rms-gate-after"),
    (1024, None, torch.bfloat16, "rms-gate-after"),
    (16384, None, torch.float32, "rms-gate-before"),
    (8192, None, torch.float32, "layer-gate-after"),
    (7168, None, torch.bfloat16, "rms-gate-before"),  # padded to 8192 (no tail)
    (7168, None, torch.float32, "rms-gate-before"),
]


def forward(x, w, b, z, gs, cfg, variant):
    """The launcher with ``cfg`` on the variant's flags (RMSNorm or LayerNorm; gate after or before the norm;
    a sigmoid gate for "sigmoid" variants, else SiLU)."""
    return fwd.norm_gated_fwd_triton(x, w, b, z, 1e-6, gs, variant.endswith("after"), variant.startswith("rms"),
                                     "sigmoid" if "sigmoid" in variant else "silu", config=cfg)


def forward_launches(x, w, b, z, gs, cfg, variant, two_launches=False):
    """``forward``; ``two_launches``: a split config as two launches (statistics, then output), as where the
    driver refuses the cooperative launch."""
    if two_launches:
        fwd.COOPERATIVE_REFUSED.add(x.device)
    try:
        return forward(x, w, b, z, gs, cfg, variant)
    finally:
        fwd.COOPERATIVE_REFUSED.discard(x.device)


def bench(x, w, b, z, gs, cfg, variant, two_launches=False):
    fn = lambda: forward_launches(x, w, b, z, gs, cfg, variant, two_launches)  # noqa: E731
    fn()
    return do_bench_cudagraph(fn)


def compare_variants(x, w, b, z, gs, default, variant, nbytes, bw, prefetch, max_registers, split, looped,
                     tiles, store_hint=False) -> None:
    """The rule's config against variants of it, three rounds alternating (min and max of each)."""
    configs = [default]
    if store_hint and default.wide and not default.split:
        configs.append(replace(default, store_hint=not default.store_hint))
    two_launches = set()  # indices into configs of split configs timed as two launches
    if split:  # the split kernel: BLOCKxWARPS[rREGISTERS][t], parts of BLOCK columns at WARPS warps (t: two
        # launches, statistics then output, instead of one cooperative launch); "looped"
        for spec in split.split(","):
            if spec == "looped":
                configs.append(fwd.looped_config(z is not None, variant.endswith("after"), fwd.WIDE_BLOCK))
                continue
            block, warps, cap, two = re.fullmatch(r"(\d+)x(\d+)(?:r(\d+))?(t?)", spec).groups()
            cfg = fwd.ForwardConfig(1, int(block), int(warps), True, split=True,
                                    max_registers=int(cap) if cap else None)
            if two:
                two_launches.add(len(configs))
            configs.append(cfg)
    if prefetch and default.wide:
        configs += [replace(default, prefetch_step=int(s)) for s in prefetch.split(",")]
    if looped:  # the looped kernel at CHUNKxWARPS, h: L2 hints, o: reduce_once, v: pass 2 reversed, s: output
        # stored evict_first; pSTEP: prefetch step; rREGISTERS
        for spec in looped.split(","):
            chunk, warps, letters, step, cap = re.fullmatch(r"(\d+)x(\d+)([hovs]*)(?:p(\d+))?(?:r(\d+))?",
                                                            spec).groups()
            configs.append(fwd.ForwardConfig(1, int(chunk), int(warps), True, reverse_pass2="v" in letters,
                                             l2_hints="h" in letters, reduce_once="o" in letters,
                                             store_hint="s" in letters, prefetch_step=int(step or 0),
                                             max_registers=int(cap) if cap else None))
    if tiles:  # one-pass tiles: ROWSxCOLUMNS[+TAIL]xWARPS[w|a] (weight first or after; else as the rule would)
        for spec in tiles.split(","):
            block_m, block_n, tail, warps, weight = re.fullmatch(r"(\d+)x(\d+)(?:\+(\d+))?x(\d+)([wa]?)",
                                                                 spec).groups()
            weight_first = weight == "w" if weight else int(warps) < 32
            configs.append(fwd.ForwardConfig(int(block_m), int(block_n), int(warps), False, int(tail or 0),
                                             weight_first=weight_first))
    if max_registers and not default.wide:
        for r in map(int, max_registers.split(",")):
            configs.append(replace(default, max_registers=r))
            if default.num_warps < 32:
                configs.append(replace(default, num_warps=2 * default.num_warps, max_registers=r))
    expected = forward(x, w, b, z, gs, default, variant)
    times = [[] for _ in configs]  # by index: a config may be timed two ways
    for _ in range(3):
        for i, cfg in enumerate(configs):
            try:
                times[i].append(bench(x, w, b, z, gs, cfg, variant, i in two_launches) * 1e3)
            except Exception as e:  # out of resources etc.
                times[i].append(float("nan"))
                print(f"  skip {cfg}: {type(e).__name__}")
    dtype = str(x.dtype).removeprefix("torch.")
    print(f"{variant} {dtype} N={x.shape[-1]} gs={gs or x.shape[-1]} M={x.shape[0]}: the rule's {default}")
    for i, (cfg, ts) in enumerate(zip(configs, times, strict=True)):
        changed = {k: v for k, v in cfg.__dict__.items() if v != default.__dict__[k]}
        got = forward_launches(x, w, b, z, gs, cfg, variant, i in two_launches)
        same = all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))  # same arithmetic: bitwise the rule's
        # another kernel or part width sums in another order: the largest difference from the rule's output
        differs = f"  max |out - rule's| {(got[0].float() - expected[0].float()).abs().max().item():.2e}"
        label = (str(changed) if changed else "rule" if i == 0 else "the rule's config") + (
            ", two launches" if i in two_launches else "")
        print(f"    {label}: {min(ts):.1f}-{max(ts):.1f} us ({nbytes / min(ts) / 1e3 / bw * 100:.0f}%)"
              + ("" if same else differs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--elements", type=int, default=1 << 26)
    ap.add_argument("--only", default=None,
                    help="time only the shapes whose 'variant N gGROUP dtype' (dtype: bfloat16, float32) contains "
                         "one of these (comma-separated)")
    ap.add_argument("--rows", type=int, default=None, help="rows M of every shape (decode: 1 or 32) instead of "
                    "--elements // N")
    ap.add_argument("--reduce-once", action="store_true",
                    help="time only the looped kernel with L2 hints, with and without reduce_once (RMSNorm shapes)")
    ap.add_argument("--prefetch", default=None,
                    help="time only the rule's config and it with these prefetch steps (wide kernel; comma-separated), "
                         "three rounds alternating")
    ap.add_argument("--max-registers", default=None,
                    help="time only the rule's config and it capped at these registers a thread (maxnreg), also at "
                         "twice the warps; three rounds alternating")
    ap.add_argument("--split", default=None,
                    help="time only the rule's config and the split kernel at these BLOCKxWARPS[rREGISTERS][t] "
                         "(columns a part, a register cap; t: two launches, statistics then output), and"
                         " 'looped' (the looped kernel as the rule configures it), "
                         "comma-separated; three rounds alternating")
    ap.add_argument("--looped", default=None,
                    help="time only the rule's config and the looped kernel at these "
                         "CHUNKxWARPS[hovs][pSTEP][rREGISTERS] (h: L2 hints, o: one reduction a row, v: pass 2 "
                         "reversed, s: output stored evict_first; a prefetch step; a register cap), comma-separated; "
                         "three rounds alternating")
    ap.add_argument("--store-hint", action="store_true",
                    help="time only the rule's config and, where it is the looped kernel, it with pass 2's output "
                         "stores hinted evict_first or not, the other way from the rule; three rounds alternating")
    ap.add_argument("--tile", default=None,
                    help="time only the rule's config and one-pass tiles ROWSxCOLUMNS[+TAIL]xWARPS[w|a] (w: weight and "
                         "bias loaded first, a: after the statistics; neither: first below 32 warps, as the rule), "
                         "comma-separated; three rounds alternating")
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}  copy bandwidth {bw:.0f} GB/s  triton {triton.__version__}")
    results = []
    for n, gs, dtype, variant in SHAPES:
        label = f"{variant} {n} g{gs or n} {str(dtype).removeprefix('torch.')}"
        if args.only and not any(o in label for o in args.only.split(",")):
            continue
        m = args.rows or args.elements // n
        x = torch.randn(m, n, device="cuda", dtype=dtype)
        z = torch.randn_like(x) if "nogate" not in variant else None
        w = torch.randn(n, device="cuda", dtype=dtype)
        b = torch.randn(n, device="cuda", dtype=dtype) if "bias" in variant else None
        nbytes = (3 if z is not None else 2) * x.numel() * x.element_size()
        group = gs or n
        block_n = triton.next_power_of_2(group)
        configs = []
        # the padded group as one tile, and a power-of-two head plus a tail tile where that saves lanes
        splits = sorted({(block_n, 0), fwd.head_and_tail(group)}, reverse=True)
        if block_n <= 32768:
            for block_m in (1, 2, 4, 8, 16, 32, 64, 128):
                if block_m * block_n > 32768 or block_m * block_n < 512 or block_m > max(m, 1):
                    continue
                for warps in (1, 2, 4, 8, 16, 32):
                    per_thread = block_m * block_n // (32 * warps)
                    if 4 <= per_thread <= 64:
                        for head_n, tail_n in splits:
                            configs.append(fwd.ForwardConfig(block_m, head_n, warps, False, tail_n))
        if group >= 4096:
            for chunk in (1024, 2048, 4096, 8192):
                for warps in (4, 8, 16):
                    configs.append(fwd.ForwardConfig(1, chunk, warps, True))
            # the wide kernel's pass-2 options (reverse order, L2 hints; session 3), from 4096 columns since
            # session 6 (on ungated 8192 torch.compile reaches 100 % against the one-pass tile's 96 %: a
            # two-pass kernel whose second read hits L2 might too)
            for chunk in (2048, 4096, 8192):
                for warps in (8, 16, 32):
                    for reverse, hints in ((True, False), (False, True), (True, True)):
                        configs.append(fwd.ForwardConfig(1, chunk, warps, True, reverse_pass2=reverse, l2_hints=hints))
            if group >= 16384:  # a persistent grid: fewer rows in flight, so pass 2 finds more in L2 (session 6)
                for chunk in (4096, 8192):
                    for warps in (16, 32):
                        for pps in (1, 2):
                            for hints in (False, True):
                                configs.append(fwd.ForwardConfig(1, chunk, warps, True, reverse_pass2=True,
                                                                 l2_hints=hints, programs_per_sm=pps))
        if args.reduce_once:  # session 7's lead: Inductor's looped RMSNorm reduces once a row (BENCHMARKS.md)
            configs = [fwd.ForwardConfig(1, chunk, warps, True, l2_hints=True, reduce_once=once)
                       for chunk in (2048, 4096, 8192) for warps in (8, 16) for once in (False, True)]
        default = fwd.forward_config(group, m, z is not None, variant.endswith("after"), variant.startswith("rms"),
                                     n // group, x.element_size())
        if args.prefetch or args.max_registers or args.split or args.looped or args.tile or args.store_hint:
            compare_variants(x, w, b, z, gs, default, variant, nbytes, bw, args.prefetch, args.max_registers,
                             args.split, args.looped, args.tile, args.store_hint)
            continue
        timed = []
        for cfg in configs:
            try:
                ms = bench(x, w, b, z, gs, cfg, variant)
            except Exception as e:  # out of resources etc.
                print(f"  skip {cfg}: {type(e).__name__}")
                continue
            timed.append((ms, cfg))
        timed.sort(key=lambda t: t[0])
        d_ms = bench(x, w, b, z, gs, default, variant)
        pct = nbytes / d_ms / 1e6 / bw * 100
        print(f"{variant} {dtype} N={n} gs={group} M={m}: default {default} {d_ms * 1e3:.1f} us ({pct:.0f}%)")
        for ms, cfg in timed[:4]:
            print(f"    {cfg} {ms*1e3:.1f} us ({nbytes/ms/1e6/bw*100:.0f}%)")
        results.append({"n": n, "group": group, "m": m, "variant": variant, "dtype": str(dtype),
                        "default": [default.__dict__, d_ms], "ranked": [[c.__dict__, t] for t, c in timed]})
        del x, z, b
    if args.out:
        with open(os.path.join(args.out, "tune_forward.json"), "w") as f:
            json.dump({"copy_gbps": bw, "results": results}, f)


if __name__ == "__main__":
    main()
