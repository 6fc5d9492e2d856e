"""Registers, spills and SASS instruction counts of the kernels the launch rules choose for the benchmark's
shapes, from ptxas and nvdisasm for sm_90a, without a GPU (static evidence to go with the timings: a tile
that spills is a tuning lead; an issue-bound kernel runs faster with fewer instructions, as the sigmoid of
session 6 showed).
Integer arguments are specialized as the launch does (``ngroups == 1`` constant, multiples of 16 divisible):
compiled unspecialized, the 5120-column backward showed a 396-byte spill that the launched kernel lacks.

    python scripts/ptxas_report.py        # with the installed Triton (each Triton allocates differently)
    python scripts/ptxas_report.py --tiles  # one-row tiles at 8-32 warps, bf16 and float32, weight and bias
                                            # loaded after the statistics and first, with the programs an SM
                                            # holds (sessions 14-16's timings, BENCHMARKS.md)
    python scripts/ptxas_report.py --weight-first  # every tile the rule loads weight and bias first in: which
                                                   # spill (about 15 minutes on 2 cores)
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import triton  # noqa: E402
from compile_kernels import B, F, compile_variant, flags  # noqa: E402  (also clears TRITON_INTERPRET)

NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
PTXAS, NVDISASM = os.path.join(NVIDIA_BIN, "ptxas"), os.path.join(NVIDIA_BIN, "nvdisasm")

# (name, group size, rows, gated, kernel_flags arguments, bias): the cases (one group, but nemotron-h's 8)
FORWARD = [
    ("qwen3next g128 gate-after", 128, 4096, True, {"nbg": True}, False),
    ("mamba2 5120 gate-before", 5120, 4096, True, {}, False),
    ("mamba2 decode 1x5120", 5120, 1, True, {}, False),
    ("nemotron-h g1024", 1024, 4096, True, {}, False),
    ("layernorm+bias 4096", 4096, 4096, False, {"has_z": False, "rms": False}, True),
    ("rms no gate 8192", 8192, 4096, False, {"has_z": False}, False),
    ("wide 32768 gate-after", 32768, 64, True, {"nbg": True}, False),
    ("wide 65536 gate-after, 64 rows", 65536, 64, True, {"nbg": True}, False),
    ("wide 65536 gate-after", 65536, 1024, True, {"nbg": True}, False),
    ("wide 65536 gate-before", 65536, 1024, True, {}, False),
]
BACKWARD = [("qwen3next g128 gate-after", 128, {"nbg": True}), ("mamba2 5120 gate-before", 5120, {}),
            ("nemotron-h g1024", 1024, {})]


# (name, group size, flags, bias, tiles (block_m, head, tail, warps)): the tiles sessions 14-16 timed against each
# other
TILES = [
    ("rms gate-before 8192", 8192, {}, False, [(1, 8192, 0, 8), (1, 8192, 0, 16), (1, 8192, 0, 32)]),
    ("rms gate-after 8192", 8192, {"nbg": True}, False, [(1, 8192, 0, 8), (1, 8192, 0, 16), (1, 8192, 0, 32)]),
    ("layer+bias gate-before 8192", 8192, {"rms": False}, True, [(1, 8192, 0, 8), (1, 8192, 0, 16)]),
    ("layer gate-after 8192", 8192, {"rms": False, "nbg": True}, False, [(1, 8192, 0, 8), (1, 8192, 0, 16)]),
    ("rms gate-before 5120", 5120, {}, False, [(1, 4096, 1024, 8), (1, 4096, 1024, 16), (1, 4096, 1024, 32)]),
    ("rms gate-before 16384", 16384, {}, False, [(1, 16384, 0, 16), (1, 16384, 0, 32)]),
    ("layer+bias gate-before 16384", 16384, {"rms": False}, True, [(1, 16384, 0, 16), (1, 16384, 0, 32)]),
    ("layer+bias gate-before 12288", 12288, {"rms": False}, True, [(1, 8192, 4096, 16), (1, 8192, 4096, 32)]),
    ("rms gate-after 128", 128, {"nbg": True}, False, [(16, 128, 0, 4), (16, 128, 0, 8)]),
    ("rms ungated 8192", 8192, {"has_z": False}, False, [(1, 8192, 0, 8)]),
    ("rms ungated 16384", 16384, {"has_z": False}, False, [(1, 16384, 0, 16)]),
    ("layer+bias ungated 8192", 8192, {"has_z": False, "rms": False}, True, [(1, 8192, 0, 8)]),
]


def programs_per_sm(registers: int, num_warps: int) -> int:
    """Programs of ``num_warps`` warps an H100/H200 SM holds by registers (64K a SM, allocated 8 a thread at a
    time), warps (64) and blocks (32); shared memory (a few bytes a warp for the reductions) does not bind."""
    return min(65536 // ((registers + 7) // 8 * 8 * 32 * num_warps), 64 // num_warps, 32)


def registers_and_spills(compiled) -> tuple[int, int, int]:
    """(registers a thread, bytes spilled, SASS instructions) of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        run = subprocess.run([PTXAS, "-arch=sm_90a", "-v", ptx, "-o", cubin], capture_output=True, text=True)
        sass = subprocess.run([NVDISASM, "-c", cubin], capture_output=True, text=True).stdout
    text = run.stdout + run.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    instructions = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+\S", sass, flags=re.MULTILINE))
    return int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else 0, instructions


def launch_ints(name: str, group_size: int, rows: int, block_n: int) -> dict[str, int]:
    """The integer arguments of a launch on this shape (row strides of contiguous tensors)."""
    ngroups = 8 if "nemotron" in name else 1
    cols = group_size * ngroups
    return {"M": rows, "group_size": group_size, "ngroups": ngroups, "chunks_per_group": -(-group_size // block_n),
            "parts": -(-group_size // block_n),
            "stride_x_row": cols, "stride_z_row": cols, "stride_dy_row": cols}


def tile_study() -> None:
    print(f"triton {triton.__version__}, ptxas for sm_90a")
    for data in ("*bf16", "*fp32"):
        for name, gs, fl, bias, tiles in TILES:
            for (block_m, head, tail, warps), weight_first in itertools.product(tiles, (False, True)):
                cfg = F.ForwardConfig(block_m, head, warps, False, tail, weight_first=weight_first)
                kernel, options = F.kernel_and_options(cfg, flags(**fl), bias, gs)
                regs, spill, sass = registers_and_spills(
                    compile_variant(kernel, options, data, launch_ints(name, gs, 4096, head)))
                held = programs_per_sm(regs, warps)
                tile = f"{block_m}x{head}{f'+{tail}' if tail else ''}x{warps}{'w' if weight_first else 'a'}"
                print(f"  {data[1:]:5s} {name:30s} {tile:16s} {regs:3d} registers, {spill} bytes spilled, "
                      f"{sass:4d} SASS instructions, {held} programs ({held * warps} warps) an SM")


def weight_first_spills() -> None:
    """Compile every one-pass tile the rule loads weight and bias first in (config_sweep's configurations), for
    a gate before and after the norm and LayerNorm with bias (ungated tiles: RMSNorm and LayerNorm), bf16 and
    float32, and print those that spill (session 15: none)."""
    from custom_norm import config_sweep
    tiles = {(cfg, gated): sizes for (cfg, gated), sizes in config_sweep.forward_configs().items()
             if cfg.weight_first}
    print(f"triton {triton.__version__}, ptxas for sm_90a: {len(tiles)} weight-first tiles")
    spilled = 0
    for (cfg, gated), sizes in tiles.items():
        flag_sets = ([({}, False), ({"nbg": True}, False), ({"rms": False}, True)] if gated
                     else [({"has_z": False}, False), ({"has_z": False, "rms": False}, True)])
        for fl, bias in flag_sets:
            for data in ("*bf16", "*fp32"):
                kernel, options = F.kernel_and_options(cfg, flags(**fl), bias, max(sizes))
                regs, spill, _ = registers_and_spills(
                    compile_variant(kernel, options, data, launch_ints("", max(sizes), 4096, cfg.block_n)))
                if spill:
                    spilled += 1
                    print(f"  {data[1:]:5s} {cfg} {fl} bias={bias}: {regs} registers, {spill} bytes spilled")
    print(f"{spilled} spilled")


def main() -> None:
    if "--tiles" in sys.argv[1:]:
        tile_study()
        return
    if "--weight-first" in sys.argv[1:]:
        weight_first_spills()
        return
    print(f"triton {triton.__version__}, ptxas for sm_90a, bf16 tensors")
    for name, gs, rows, gated, fl, bias in FORWARD:
        cfg = F.forward_config(gs, rows, gated, fl.get("nbg", False), fl.get("rms", True))
        kernel, options = F.kernel_and_options(cfg, flags(**fl), bias, gs)
        regs, spill, sass = registers_and_spills(
            compile_variant(kernel, options, "*bf16", launch_ints(name, gs, rows, cfg.block_n)))
        print(f"  forward  {name:28s} {cfg}: {regs} registers, {spill} bytes spilled, {sass} SASS instructions")
    for name, gs, fl in BACKWARD:
        cfg = B.backward_config(gs, 4096)
        options = B._launch_options(cfg, flags(**fl), False, True, True, True, False, False)
        chunk = cfg.block_n if cfg.wide or not cfg.block_tail else gs
        regs, spill, sass = registers_and_spills(
            compile_variant(B._bwd_kernel, options, "*bf16", launch_ints(name, gs, 4096, chunk)))
        print(f"  backward {name:28s} {cfg}: {regs} registers, {spill} bytes spilled, {sass} SASS instructions")


if __name__ == "__main__":
    main()
