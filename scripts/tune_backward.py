"""Sweep the backward kernel's tiles, warps and persistent-grid size on the GPU (evidence for
``backward_config`` in custom_norm/kernels/backward.py; see BENCHMARKS.md's notes).

Times the backward launcher alone (CUDA graphs), bf16, for the issue's fwd+bwd shapes.
Usage: python3 scripts/tune_backward.py [--out DIR] [--only mamba2] [--reload] [--pps 1,2,4] [--max-registers 80]
                                       [--prefetch 16,64] [--stages 2,3] [--flip column_sums_once,hold_affine]
                                       [--rule-only]

Before session 3 every candidate ran with the default 4 programs per SM whatever the printed pps said
(the loop set a module constant the configurations had already copied); candidates now carry their own.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

import torch
from triton.testing import do_bench_cudagraph

import custom_norm.kernels.backward as bwd
from custom_norm.kernels.forward import head_and_tail, norm_gated_fwd_triton
from custom_norm.kernels.launch import next_power_of_2

SHAPES = {  # name: (M, N, group_size, norm_before_gate)
    "mamba2 16384x5120": (16384, 5120, None, False),
    "qwen3next 524288x128": (524288, 128, None, True),
    "nemotron-h 16384x8192 g1024": (16384, 8192, 1024, False),
    # one-row tiles of other widths, for the rule beyond mamba2's 5120 (session 5)
    "one group 16384x8192": (16384, 8192, None, False),
    "one group 16384x4096": (16384, 4096, None, False),
    "one group 16384x3072": (16384, 3072, None, False),
    # tiles of several rows of narrow groups, for the prefetch rule (session 8)
    "groups of 256 16384x4096 g256": (16384, 4096, 256, False),
    "groups of 512 16384x4096 g512": (16384, 4096, 512, True),
    "one group 65536x1024": (65536, 1024, None, False),
    "one group 32768x2048": (32768, 2048, None, False),
    # the same widths in one group: does the tile rule for narrow groups need the group count? (session 9)
    "one group 262144x256": (262144, 256, None, False),
    "one group 131072x512": (131072, 512, None, True),
    # narrower groups, tiles of 16 and 8 rows (session 9)
    "groups of 64 16384x4096 g64": (16384, 4096, 64, False),
    "groups of 128 16384x4096 g128": (16384, 4096, 128, True),
    # bench.py --suite models: Mamba2-130m's width, 66 % of the fwd+bwd floor (session 13)
    "one group 16384x1536": (16384, 1536, None, False),
    "one group 16384x1280": (16384, 1280, None, False),
    "one group 16384x2560": (16384, 2560, None, False),
}


def candidates(group: int, m: int, pps: int, reload_options=(False,)):
    """Configurations to time for a group size, each with ``pps`` programs per SM; fused tiles once per
    ``reload_tile`` option."""
    block_n = next_power_of_2(group)
    for wide_block in ((1024, 2048, 4096) if block_n >= 4096 else ()):
        for warps in (4, 8, 16):
            yield bwd.BackwardConfig(1, wide_block, warps, True, pps)
    # a power-of-two head and a tail tile where that saves lanes (5120 = 4096 + 1024), as the forward does
    splits = sorted({(block_n, 0), head_and_tail(group)}, reverse=True)
    for block_m in (1, 2, 4, 8, 16, 32, 64):
        for head_n, tail_n in splits:
            tile = block_m * (head_n + tail_n)
            if tile > 8192 or tile < 256 or block_m > m:
                continue
            for warps in (2, 4, 8, 16, 32):
                if 4 <= tile // (32 * warps) <= 32:
                    for reload_tile in reload_options:
                        yield bwd.BackwardConfig(block_m, head_n, warps, False, pps, tail_n, reload_tile)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None,
                    help="time only the shapes whose name contains one of these (comma-separated)")
    ap.add_argument("--reload", action="store_true", help="also time each fused tile loaded twice (reload_tile)")
    ap.add_argument("--pps", default="2,4,8,16", help="programs per SM to try, comma-separated")
    ap.add_argument("--max-registers", default="",
                    help="also time the rule's config capped at these registers a thread (maxnreg), comma-separated")
    ap.add_argument("--prefetch", default="",
                    help="also time the rule's config prefetching the next tile into L2, an address every this many "
                         "elements (prefetch_step), comma-separated")
    ap.add_argument("--stages", default="",
                    help="also time the rule's config with its row loop software-pipelined at this many stages "
                         "(loop_stages), comma-separated; with --prefetch, each pair too")
    ap.add_argument("--flip", default="",
                    help="also time every config with these boolean options flipped (column_sums_once, hold_affine), "
                         "comma-separated")
    ap.add_argument("--rule-only", action="store_true",
                    help="time only the rule's config and its variants (--max-registers, --prefetch, --stages, --flip)")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()}")
    flipped = [name for name in args.flip.split(",") if name]

    def flip(cfg):
        return replace(cfg, **{name: not getattr(cfg, name) for name in flipped})

    results = {}
    for name, (m, n, gs, nbg) in SHAPES.items():
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        z, dy = torch.randn_like(x), torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        _, mean, rstd = norm_gated_fwd_triton(x, w, None, z, 1e-6, gs, nbg, True, "silu")
        floor_bytes = 5 * x.numel() * x.element_size()

        def run(cfg, x=x, w=w, z=z, dy=dy, mean=mean, rstd=rstd, gs=gs, nbg=nbg):
            return bwd.norm_gated_bwd_triton(dy, x, w, None, z, mean, rstd, gs, nbg, True, "silu",
                                             [True, True, True, False], config=cfg)

        rows = []
        default = bwd.backward_config(gs or n, m)
        reload_options = (False, True) if args.reload else (False,)
        # the rule's config with and without its own speed options, at its programs per SM (timed once)
        steps = {0, default.prefetch_step, *(int(v) for v in args.prefetch.split(",") if v)}
        stages = {0, default.loop_stages, *(int(v) for v in args.stages.split(",") if v)}
        rule_variants = [replace(default, prefetch_step=step, loop_stages=stage) for step in sorted(steps)
                         for stage in sorted(stages) if (step, stage) != (default.prefetch_step, default.loop_stages)
                         ] if args.prefetch or args.stages else []
        if flipped:
            rule_variants += [flip(cfg) for cfg in [default, *rule_variants]]
        for i, pps in enumerate(int(p) for p in args.pps.split(",")):
            todo = [] if args.rule_only else list(candidates(gs or n, m, pps, reload_options))
            if flipped:
                todo = [variant for cfg in todo for variant in (cfg, flip(cfg))]
            # the rule's config with a register cap, at this many programs per SM (the rule's may be fewer
            # than a lower register count lets fit)
            capped = [replace(default, max_registers=int(r), programs_per_sm=pps)
                      for r in args.max_registers.split(",") if r]
            for cfg in [*([default, *rule_variants] if i == 0 else []), *capped, *todo]:
                try:
                    run(cfg)
                    ms = do_bench_cudagraph(lambda cfg=cfg: run(cfg))
                except Exception as e:  # out of resources
                    print(f"  skip {cfg} pps={pps}: {type(e).__name__}")
                    continue
                rows.append((ms, cfg.programs_per_sm, cfg))
        rows.sort(key=lambda r: r[0])
        print(f"{name}: default {default}")
        shown = rows[:6] + [next(r for r in rows if r[2].reload_tile == reloaded)  # the best of each kind
                            for reloaded in reload_options if any(r[2].reload_tile == reloaded for r in rows)]
        shown += [r for r in rows if r[2] in rule_variants or r[2] == default or r[2].max_registers]  # the rule's
        for ms, pps, cfg in dict.fromkeys(shown):  # each row once, in order
            print(f"    pps={pps:<2} {cfg} {ms*1e3:8.1f} us ({floor_bytes/ms/1e6:6.0f} GB/s)")
        results[name] = [[ms, pps, cfg.__dict__] for ms, pps, cfg in rows]
        del x, z, dy
    if args.out:
        suffix = f"_{args.only.replace(' ', '_').replace(',', '-')}" if args.only else ""
        with open(os.path.join(args.out, f"tune_backward{suffix}.json"), "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
