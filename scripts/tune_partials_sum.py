"""Time the backward's second stage, the sum of the dweight/dbias partials' rows (evidence for
``SUM_KERNEL_MIN_COLUMNS`` in custom_norm/kernels/backward.py): torch.sum then the cast, against
``_sum_partials_kernel``, on the partial buffers the backward makes (rows: programs of its persistent grid).

Usage: python3 scripts/tune_partials_sum.py
"""

from __future__ import annotations

import torch
from triton.testing import do_bench_cudagraph

import custom_norm.kernels.backward as bwd

# (rows, columns): mamba2 and nemotron-h (2 programs an SM of 132), qwen3next (16 an SM), and other widths
SHAPES = [(264, 5120), (264, 8192), (2112, 128), (264, 1024), (264, 2048), (528, 2048), (264, 4096),
          (1056, 4096), (132, 65536), (2112, 256), (2112, 512), (1056, 512), (1056, 1024), (2112, 1024)]


def main() -> None:
    print(f"device {torch.cuda.get_device_name()}")
    bwd.SUM_KERNEL_MIN_COLUMNS = 1  # the launcher's own path to the kernel, at every width timed here
    device = torch.device("cuda", torch.cuda.current_device())  # CachedKernel wants the index
    for rows, cols in SHAPES:
        partial = torch.randn(rows, cols, device=device)
        expected = partial.double().sum(0)

        def with_torch(partial=partial):
            return partial.sum(0).to(torch.bfloat16)

        def with_kernel(partial=partial):
            return bwd._sum_partials(partial, torch.bfloat16, device)

        times = {}
        for name, fn in (("torch.sum", with_torch), ("kernel", with_kernel)):
            err = ((fn().double() - expected).norm() / expected.norm()).item()
            assert err < 1e-2, (name, rows, cols, err)
            times[name] = do_bench_cudagraph(fn) * 1e3
        torch_us, kernel_us = times["torch.sum"], times["kernel"]
        print(f"  {rows:5d} x {cols:6d}: torch.sum + cast {torch_us:6.2f} us, kernel {kernel_us:6.2f} us "
              f"({torch_us / kernel_us:.2f}x)")


if __name__ == "__main__":
    main()
