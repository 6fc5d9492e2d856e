"""Show the Triton code Inductor generates for the plain reference of a bench.py case, and time it against ours.

Evidence for cases where `torch.compile` of the plain code is ahead (ungated RMSNorm of 8192 columns, 4 %):
its kernels' source (block sizes, warps, eviction hints, reduction shape) printed, then both timed with CUDA
graphs in one process, with the looped and one-pass tiles of ours.
Usage: python3 scripts/inductor_code.py [--case rms_nogate] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from torch._inductor.utils import run_and_get_code
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="rms_nogate")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    case = next(c for c in bench.CASES if c.name == args.case)
    inp = bench.make_inputs(case, "cuda", seed=0)
    x, z, w, b = inp.x, inp.z, inp.w, inp.b
    compiled = bench.PROVIDER_BY_NAME["compiled"].build(case)
    _, sources = run_and_get_code(compiled, x, z, w, b)
    text = "\n\n".join(sources)
    print(text)
    if args.out:
        Path(args.out, f"inductor_{case.name}.py").write_text(text)
    ours = bench.PROVIDER_BY_NAME["ours"].build(case)
    for label, fn in (("ours", ours), ("compiled", compiled)):
        fn(x, z, w, b)
        print(f"{label:10s} {do_bench_cudagraph(lambda fn=fn: fn(x, z, w, b)) * 1e3:7.1f} us", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
