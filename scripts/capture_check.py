"""CUDA-graph capture of a forward+backward step, in the ways bench.py and users capture it (GPU).

Each variant runs in its own process (a failed capture can leave a process unusable) and prints OK with the
replayed step's agreement with eager, or the error and where it was raised. Variants differ in one thing
each, so that a failure points at its cause: the capture mode, the number of steps in one graph, an eager
timing loop before the capture, the route (direct call or the op through the dispatcher), or the provider.

    python3 scripts/capture_check.py                 # all variants, mamba2 prefill fwd+bwd
    python3 scripts/capture_check.py --case qwen3next_prefill_bwd
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import traceback
from pathlib import Path

VARIANTS = {
    "bench": "bench.py's sequence: correctness call, eager timing loop, 3 warm-ups on a side stream, "
             "capture of 4 steps (global mode)",
    "thread-local": "as bench, capture_error_mode='thread_local'",
    "relaxed": "as bench, capture_error_mode='relaxed'",
    "via-op": "as bench, calling torch.ops.norm_gated.fwd (dispatcher and registered autograd)",
    "fla-orig": "as bench, fla's original kernel (control)",
    "retained-graph": "as bench, with the correctness call's output (and so its autograd graph) kept alive, as "
                      "bench.py did before it dropped it",
    "after-compiled": "as bench, after bench.py's run of the compiled provider on wide_65536 (the case bench.py "
                      "runs just before)",
    "after-compiled-nogc": "as after-compiled, with Python's garbage collector off during the capture",
}


def run_variant(case_name: str, variant: str) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gc

    import bench

    from custom_norm.testing import warm_up_on_side_stream  # the repository is on the path once bench is in

    if variant.startswith("after-compiled"):
        before = next(c for c in bench.CASES if c.name == "wide_65536")
        before_inp = bench.make_inputs(before, "cuda", 0)
        torch._dynamo.reset()
        result = bench.run_provider(bench.PROVIDER_BY_NAME["compiled"], before, before_inp,
                                    bench.reference(before, before_inp), bench.Settings())
        print(f"{'':<15}(compiled on {before.name}: {result.status}, {result.graph_method})")
        del before_inp
        torch._dynamo.reset()
        gc.collect()
    case = next(c for c in bench.CASES if c.name == case_name)
    inp = bench.make_inputs(case, "cuda", 0)
    if variant == "fla-orig":
        f = bench.PROVIDER_BY_NAME["fla_orig"].build(case)
    elif variant == "via-op":
        import custom_norm  # noqa: F401  (registers the op)

        def f(x, z, w, b):
            return torch.ops.norm_gated.fwd(x, w, b, z, case.eps, case.group_size, case.norm_before_gate, case.rms,
                                            case.activation)[0]
    else:
        f = bench.PROVIDER_BY_NAME["ours"].build(case)
    leaves = inp.leaves()

    def step():
        return torch.autograd.grad(f(inp.x, inp.z, inp.w, inp.b), leaves, inp.dy)

    want = step()
    if variant == "retained-graph":
        kept = f(inp.x, inp.z, inp.w, inp.b)  # noqa: F841  (its graph stays alive through the capture)
    if variant != "no-eager-loop":
        bench.time_eager(step, 0.025)
    mode = {"thread-local": "thread_local", "relaxed": "relaxed"}.get(variant, "global")
    n_steps = 1 if variant == "one-step" else 4
    warm_up_on_side_stream(step)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    if variant.endswith("nogc"):
        gc.disable()
    try:
        with torch.cuda.graph(graph, capture_error_mode=mode):
            for _ in range(n_steps):
                got = step()
        gc.enable()
        graph.replay()
        torch.cuda.synchronize()
    except Exception as e:  # report, don't raise: the next variant runs in a fresh process
        gc.enable()
        frames = traceback.extract_tb(e.__traceback__)[-4:]
        where = " <- ".join(f"{Path(fr.filename).name}:{fr.lineno} {fr.name}" for fr in reversed(frames))
        print(f"{variant:<14} FAILED {type(e).__name__}: {str(e).splitlines()[0][:150]}\n{'':<15}at {where}")
        return
    same = all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    print(f"{variant:<14} OK, replay {'bitwise equal to' if same else 'DIFFERENT from'} eager")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="mamba2_prefill_bwd")
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="run one variant in this process")
    args = ap.parse_args()
    if args.variant:
        run_variant(args.case, args.variant)
        return
    print(f"capture_check: {args.case}")
    for name, what in VARIANTS.items():
        print(f"  [{name}] {what}", flush=True)
        done = subprocess.run([sys.executable, __file__, "--case", args.case, "--variant", name],
                              capture_output=True, text=True, timeout=240)
        lines = (done.stdout.strip() or done.stderr.strip()[-600:] or f"exit {done.returncode}").splitlines()
        print("    " + "\n    ".join(lines[-4:]), flush=True)


if __name__ == "__main__":
    main()
