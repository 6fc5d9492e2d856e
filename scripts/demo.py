"""custom_norm demo: a small Mamba2-style block with the gated RMSNorm, on the best available device.

Runs the block eagerly, under torch.compile and through torch.export, checks each against the float64
reference, and prints a short timing.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

import custom_norm


class Mamba2StyleBlock(nn.Module):
    """in_proj -> (x, z) -> depthwise causal conv + SiLU on x -> gated RMSNorm(x, z) -> out_proj."""

    def __init__(self, d_model: int = 256, expand: int = 2, ngroups: int = 4, use_custom: bool = True) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = nn.Conv1d(d_inner, d_inner, kernel_size=4, groups=d_inner, padding=3)
        self.norm = custom_norm.RMSNormGated(d_inner, eps=1e-5, group_size=d_inner // ngroups,
                                             norm_before_gate=False)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.use_custom = use_custom

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = self.conv(x.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2)
        x = nn.functional.silu(x)
        if self.use_custom:
            y = self.norm(x, z)
        else:  # the plain PyTorch specification, in the input dtype's math dtype
            y = custom_norm.norm_gated_reference(x, self.norm.weight, None, z, self.norm.eps, self.norm.group_size,
                                                 norm_before_gate=False, is_rms_norm=True)[0]
        return self.out_proj(y)


def _time_ms(fn, *args, iters: int = 20) -> float:
    fn(*args)
    sync = torch.cuda.synchronize if args[0].is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn(*args)
    sync()
    return (time.perf_counter() - start) / iters * 1e3


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"custom_norm {custom_norm.__version__} | torch {torch.__version__} | device: {name} | {dtype}")
    torch.manual_seed(0)
    block = Mamba2StyleBlock().to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        block.norm.weight.normal_(1.0, 0.2)
    u = torch.randn(4, 128, 256, device=device, dtype=dtype)

    with torch.no_grad():
        ref_block = Mamba2StyleBlock(use_custom=False).double().eval()
        ref_block.load_state_dict({k: v.double().cpu() for k, v in block.state_dict().items()})
        reference = ref_block(u.double().cpu())
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        failures = 0

        def check(label: str, out: torch.Tensor) -> None:
            nonlocal failures
            err = ((out.double().cpu() - reference).norm() / reference.norm()).item()
            ok = err < tol
            failures += not ok
            print(f"  {label:<28} rel. error vs float64 reference {err:.2e}  {'ok' if ok else 'FAILED'}")

        print("correctness:")
        check("eager", block(u))
        print("  (compiling with torch.compile(fullgraph=True) ...)", flush=True)
        compiled = torch.compile(block, fullgraph=True)
        check("torch.compile", compiled(u))
        print("  (exporting with torch.export ...)", flush=True)
        batch = torch.export.Dim("batch", min=1, max=1024)
        exported = torch.export.export(block, (u,), dynamic_shapes={"u": {0: batch}})
        kept = any(n.target is torch.ops.norm_gated.fwd.default for n in exported.graph.nodes)
        check("torch.export", exported.module()(u))
        print(f"  exported graph keeps norm_gated.fwd as one node: {'yes' if kept else 'NO'}")
        failures += not kept

        print("timing (ms per block call, eager):")
        plain = Mamba2StyleBlock(use_custom=False).to(device=device, dtype=dtype).eval()
        plain.load_state_dict(block.state_dict())
        print(f"  custom_norm {_time_ms(block, u):7.3f}   plain PyTorch {_time_ms(plain, u):7.3f}")
    print("demo: all checks passed" if not failures else f"demo: {failures} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
