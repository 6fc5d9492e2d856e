"""Where an eager forward+backward call's wall time goes, on a GPU: per call, the wall time of a loop of calls,
the device time of its kernels (torch.profiler), each kernel's share, and the CUDA runtime calls that can
stall the host (allocations, synchronizations). bench.py's eager column for the forward+backward cases runs
well above their CUDA-graph kernel time; this says whether the kernels run slower eagerly or the device waits.

Usage: python3 scripts/eager_profile.py [--cases mamba2_prefill_bwd] [--providers ours,fla_orig] [--calls 20]
                                        [--cpu-top 25]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the benchmark's cases, providers and inputs)

STALLS = ("cudaMalloc", "cudaFree", "cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaMemcpy",
          "cudaMemsetAsync", "cudaEventSynchronize")


def profile_case(case: bench.Case, provider: bench.Provider, calls: int, cpu_top: int = 0) -> None:
    inp = bench.make_inputs(case, "cuda", seed=0)
    f = provider.build(case)
    leaves = inp.leaves()

    def call():
        return torch.autograd.grad(f(inp.x, inp.z, inp.w, inp.b), leaves, inp.dy)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) / calls * 1e6)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    kernels = collections.Counter()
    counts = collections.Counter()
    stalls = collections.Counter()
    first = last = None
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] += e.time_range.elapsed_us()
            counts[e.name] += 1
            first = e.time_range.start if first is None else min(first, e.time_range.start)
            last = e.time_range.end if last is None else max(last, e.time_range.end)
        elif any(e.name.startswith(s) for s in STALLS):
            stalls[e.name] += 1
    busy = sum(kernels.values()) / calls
    span = (last - first) / calls if first is not None else float("nan")
    print(f"{case.name} {provider.name}: wall {min(walls):7.1f} us/call (fastest of 5 loops of {calls}; "
          f"median {sorted(walls)[2]:.1f}), kernels {busy:7.1f} us/call, first-to-last kernel {span:7.1f} us/call "
          f"(profiled)")
    for name, t in kernels.most_common(8):
        print(f"    {t / calls:8.1f} us  x{counts[name] / calls:4.1f}  {name[:110]}")
    if stalls:
        print("    runtime calls: " + ", ".join(f"{k} x{v / calls:.1f}" for k, v in stalls.most_common()))
    if cpu_top:  # the host's side: operators and runtime calls by their own CPU time, totals over the calls
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=cpu_top, max_name_column_width=70))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="mamba2_prefill_bwd,qwen3next_prefill_bwd")
    ap.add_argument("--providers", default="ours,fla_orig")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--cpu-top", type=int, default=0, help="also print the N operators with the most host time")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}")
    cases = {c.name: c for c in bench.CASES}
    providers = {p.name: p for p in bench.PROVIDERS}
    for cname in args.cases.split(","):
        for pname in args.providers.split(","):
            try:
                profile_case(cases[cname], providers[pname], args.calls, args.cpu_top)
            except bench.Unavailable as e:
                print(f"{cname} {pname}: unavailable ({e})")


if __name__ == "__main__":
    main()
