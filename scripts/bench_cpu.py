#!/usr/bin/env python3
"""CPU section of the benchmark (issue 5): the native path of ``norm_gated::fwd`` against the plain reference.

Four providers per case, each checked against ``norm_gated_reference`` in float64 first:
- native eager: ``custom_norm.layernorm_fn`` -> ``torch.ops.norm_gated.fwd`` on CPU (custom_norm/native.py);
- native compiled: ``torch.compile`` of a function calling ``custom_norm.layernorm_fn`` (the op, or its
  Inductor lowering where one is registered);
- reference eager: ``custom_norm.norm_gated_reference`` (plain PyTorch, float32 math);
- reference compiled: ``torch.compile`` of the reference.
Every compile is fresh (``torch._dynamo.reset()`` before each case). Times are the median over repeats of a
timed loop (wall clock), in milliseconds per call; speedups are relative to the reference eager.

    python3 scripts/bench_cpu.py [--cases a,b] [--quick] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench import (  # noqa: E402
    MODELS,
    SHORT_DTYPE,
    TOLERANCE,
    Case,
    _dynamo_counts,
    make_inputs,
    model_case,
    reference,
    rel_err,
    select,
)

# Sized for a 2-core CPU: each tensor 4-16 MiB, a reference call some milliseconds.
CPU_CASES: list[Case] = [
    Case("mamba2_g256", "Mamba2-style, 4 groups", 4096, 1024, dtype="float32", norm_before_gate=False,
         group_size=256),
    Case("layernorm_bias", "LayerNorm + bias, no gate", 2048, 4096, dtype="float32", rms=False, gate=False,
         bias=True),
    Case("qwen3next", "Qwen3-Next style", 16384, 128, dtype="float32", norm_before_gate=True),
    Case("mamba2_bf16", "Mamba2-style, bf16", 2048, 2048, norm_before_gate=False),
]

# --suite models: bench.py's model suite at CPU-sized token counts, in bf16 and float32
MODEL_CPU_CASES: list[Case] = [c for m in MODELS for t in (1, 64, 512) for bf16 in [model_case(m, t)]
                               for c in (bf16, replace(bf16, name=f"{bf16.name}_fp32", dtype="float32"))]

PROVIDERS = ["native eager", "native compiled", "reference eager", "reference compiled"]


def build(name: str, c: Case):
    import custom_norm

    if name.startswith("native"):
        def f(x, z, w, b):
            return custom_norm.layernorm_fn(x, w, b, z, c.eps, c.group_size, c.norm_before_gate, c.rms,
                                            c.activation)
    else:
        def f(x, z, w, b):
            return custom_norm.norm_gated_reference(x, w, b, z, c.eps, c.group_size, c.norm_before_gate, c.rms,
                                                    c.activation)[0]
    return torch.compile(f, dynamic=False) if name.endswith("compiled") else f


def time_ms(fn, budget_s: float, repeats: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    est = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(budget_s / repeats / est))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples) * 1e3


def run_case(c: Case, budget_s: float, repeats: int, providers: list[str] = PROVIDERS) -> dict:
    torch._dynamo.reset()
    gc.collect()
    inp = make_inputs(c, "cpu", seed=0)
    ref = reference(c, inp, chunk_elements=1 << 22)["out"]
    rows = {}
    with torch.no_grad():
        for name in providers:
            torch._dynamo.reset()
            f = build(name, c)
            graphs0, breaks0 = _dynamo_counts()
            t0 = time.perf_counter()
            try:
                out = f(inp.x, inp.z, inp.w, inp.b)
            except Exception as e:  # a refusal is a result
                rows[name] = {"status": "unsupported", "detail": f"{type(e).__name__}: {e}"[:120]}
                continue
            first_s = time.perf_counter() - t0
            err = rel_err(out, ref)
            notes = []
            if name.endswith("compiled"):
                graphs, breaks = _dynamo_counts()
                if graphs == graphs0:
                    notes.append("dynamo captured no graph")
                if breaks > breaks0:
                    notes.append(f"{breaks - breaks0} graph break(s)")
            ok = err <= TOLERANCE[c.dtype]
            ms = time_ms(lambda f=f: f(inp.x, inp.z, inp.w, inp.b), budget_s, repeats)
            rows[name] = {"status": "ok" if ok else "FAIL", "ms": ms, "err": err, "first_call_s": first_s,
                          "detail": "; ".join(notes)}
            del out
    return {"case": asdict(c), "name": c.name, "describe": c.describe(), "results": rows}


def _speedup(rows: dict, name: str, base: str) -> float | None:
    a, b = rows.get(name, {}), rows.get(base, {})
    if a.get("ms") and b.get("ms"):
        return b["ms"] / a["ms"]
    return None


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [
        f"CPU: {m['cpu']}, {m['cores']} cores | {m['threads']} threads | torch {m['torch']} | Python {m['python']} | "
        f"{m['date']} | load average {m['loadavg_start']:.1f} at start, {m['loadavg_end']:.1f} at end"
        + (" (other processes were running: noisy)" if max(m["loadavg_start"], m["loadavg_end"]) > 0.5 * m["cores"]
           else ""),
        "",
        "ms per call (speedup vs reference eager); rel. err vs float64 reference in the detail of a FAIL.",
        "",
        "| case | M x N | dtype | what | " + " | ".join(PROVIDERS) + " | native compiled vs reference compiled |",
        "|" + "---|" * (5 + len(PROVIDERS)),
    ]
    for e in report["cases"]:
        c, rows = e["case"], e["results"]
        cells = []
        for name in PROVIDERS:
            r = rows.get(name, {})
            if "ms" not in r:
                cells.append(r.get("status", "–"))
                continue
            sp = _speedup(rows, name, "reference eager")
            cell = f"{r['ms']:.3f} ({sp:.2f}x)" if sp else f"{r['ms']:.3f}"
            if r["status"] != "ok":
                cell += f" FAIL {r['err']:.1e}"
            if r.get("detail"):
                cell += f" [{r['detail']}]"
            cells.append(cell)
        sp = _speedup(rows, "native compiled", "reference compiled")
        lines.append("| " + " | ".join([e["name"], f"{c['M']}x{c['N']}", SHORT_DTYPE[c["dtype"]], e["describe"]]
                                       + cells + [f"{sp:.2f}x" if sp else "–"]) + " |")
    lines += ["", "Targets (issue 5): native eager >= 3x the reference eager on 2 cores; native compiled at least "
                  "as fast as the reference compiled (last column >= 1)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=("cpu", "models"), default="cpu",
                    help="cpu: the CPU section's cases (default); models: bench.py's models at 1, 64 and 512 tokens, "
                         "bf16 and float32")
    ap.add_argument("--cases", help="comma-separated case names of the suite, or shell patterns: "
                    + ", ".join(c.name for c in CPU_CASES))
    ap.add_argument("--providers", help="comma-separated subset of: " + ", ".join(PROVIDERS))
    ap.add_argument("--quick", action="store_true", help="shorter measurements")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every case's M by this (e.g. 0.25)")
    ap.add_argument("--out", help="also write bench_cpu.json and bench_cpu.md into this directory")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = CPU_CASES if args.suite == "cpu" else MODEL_CPU_CASES
    providers = PROVIDERS
    if args.providers:
        providers = [n.strip() for n in args.providers.split(",") if n.strip()]
        if unknown := [n for n in providers if n not in PROVIDERS]:
            raise SystemExit(f"unknown providers {unknown}; known: {', '.join(PROVIDERS)}")
    cases = select(cases, args.cases, "cases")
    if args.scale != 1.0:
        cases = [replace(c, M=max(1, int(c.M * args.scale))) for c in cases]
    budget_s, repeats = (0.15, 3) if args.quick else (0.5, 5)
    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "loadavg_start": os.getloadavg()[0],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    report = {"meta": meta, "cases": []}
    if meta["loadavg_start"] > 0.5 * (meta["cores"] or 1):
        print(f"warning: load average {meta['loadavg_start']:.1f} on {meta['cores']} cores: timings will be noisy")
    start = time.perf_counter()
    for c in cases:
        entry = run_case(c, budget_s, repeats, providers)
        report["cases"].append(entry)
        print(f"[{time.perf_counter() - start:6.1f} s] {c.name} {c.M}x{c.N}: " + ", ".join(
            f"{k} {v['ms']:.3f} ms" if "ms" in v else f"{k} {v['status']}" for k, v in entry["results"].items()),
            flush=True)
    meta["loadavg_end"] = os.getloadavg()[0]
    md = markdown(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_cpu.json").write_text(json.dumps(report, indent=1))
        (out / "bench_cpu.md").write_text(md + "\n")
    print()
    print(md)
    fails = [e["name"] for e in report["cases"] for k, v in e["results"].items() if v.get("status") == "FAIL"]
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
