"""Every tile configuration the launchers' rules can choose computes the right answer.

The rules (forward_config, backward_config) map a problem to a tile shape, warps and, in the forward, a
power-of-two head plus a tail tile. Each distinct outcome is a separately compiled kernel whose layouts the
compiler picks on its own, so each one is run here on the GPU, with the forward's statistics and output or
the backward's four gradients compared with the float64 reference. Triton's interpreter (CPU) runs a sample:
it checks the kernels' semantics, not the compiler.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import TRITON_DEVICE
from test_backward import assert_grads_close, reference_grads
from utils import assert_matches_reference, make_problem, poison_cuda_allocator

import custom_norm.kernels.backward as triton_backward
import custom_norm.kernels.forward as triton_forward
from custom_norm import config_sweep

INTERPRETER_SAMPLE = 12  # every 12th configuration under the interpreter


@functools.cache
def forward_configs() -> list[tuple[triton_forward.ForwardConfig, int, bool]]:
    """Each distinct forward configuration once, with a gating and its smallest group size that select it
    (config_sweep runs each under every flag set)."""
    seen = {}
    for (cfg, gated), sizes in config_sweep.forward_configs().items():
        seen.setdefault(cfg, (cfg, min(sizes), gated))
    return list(seen.values())


@functools.cache
def backward_configs() -> list[tuple[triton_backward.BackwardConfig, int]]:
    return [(cfg, min(sizes)) for cfg, sizes in config_sweep.backward_configs().items()]


def _selected(items):
    if TRITON_DEVICE == "cuda":
        return items
    return items[::INTERPRETER_SAMPLE]


def _forward_id(item):
    cfg, gs, gated = item
    tail = f"+{cfg.block_tail}" if cfg.block_tail else ""
    return f"g{gs}-{'gated' if gated else 'plain'}-{cfg.block_m}x{cfg.block_n}{tail}-w{cfg.num_warps}"


def test_rules_produce_many_configs():
    assert len(forward_configs()) > 100 and any(c.block_tail for c, _, _ in forward_configs())
    assert len(backward_configs()) > 30 and any(c.wide for c, _ in backward_configs())


@pytest.mark.parametrize("item", _selected(forward_configs()), ids=_forward_id)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_forward_config(item, is_rms_norm):
    cfg, group_size, gated = item
    rows = 2 * cfg.block_m + 1  # three programs per group, the last one masked
    # LayerNorm with the gate before the norm, RMSNorm with it after; an offset so that a wrong mean shows
    nbg, act = (False, "silu") if not is_rms_norm else (True, "sigmoid")
    # eps large enough that groups of one or two values are well conditioned (rstd within float32 rounding)
    x, w, b, z = make_problem((rows, 2 * group_size), torch.bfloat16, TRITON_DEVICE, has_z=gated, offset=3.0)
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 0.1, group_size, nbg, is_rms_norm, act, config=cfg)
    assert_matches_reference(result, x, w, b, z, 0.1, group_size, nbg, is_rms_norm, act)


@pytest.mark.parametrize("item", _selected(backward_configs()),
                         ids=lambda item: f"g{item[1]}-{item[0].block_m}x{item[0].block_n}-w{item[0].num_warps}")
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_backward_config(item, is_rms_norm):
    cfg, group_size = item
    rows = 2 * cfg.block_m + 1
    nbg, act = (False, "silu") if not is_rms_norm else (True, "sigmoid")
    shape = (rows, 2 * group_size)
    x, w, b, z = make_problem(shape, torch.float32, TRITON_DEVICE, offset=1.0)
    dy = torch.randn(shape, device=TRITON_DEVICE)
    # statistics from the Triton forward, which rounds x * gate as the backward does; eps large enough that
    # groups of one or two values are well conditioned in float32
    eps = 0.1
    _, mean, rstd = triton_forward.norm_gated_fwd_triton(x, w, b, z, eps, group_size, nbg, is_rms_norm, act)
    poison_cuda_allocator()
    grads = triton_backward.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, group_size, nbg, is_rms_norm, act,
                                                  [True, True, True, True], config=cfg)
    dx, dz, dw, db = grads
    ref = reference_grads(dy, x, w, b, z, group_size, nbg, is_rms_norm, act, eps=eps)
    if group_size == 1 and not is_rms_norm:  # a one-value group normalizes to 0 whatever x and z are
        assert all(torch.equal(g, torch.zeros_like(g)) for g in (dx, dz, dw))
        assert_grads_close((db,), ref[2:3], (b,), names=("bias",))
    else:
        assert_grads_close((dx, dw, db, dz), ref, (x, w, b, z))


# ---- custom_norm.config_sweep, the GPU-wide version of the checks above ----

def test_config_sweep_runs_its_tasks():
    """A sample of the sweep's tasks, forward and backward, run and pass (GPU, or the interpreter)."""
    forward, backward = config_sweep.forward_tasks(["bfloat16"]), config_sweep.backward_tasks(["float32"])
    one_row = [next(t for t in forward if t[4] == 1), next(t for t in backward if t[4] == 1)]
    tasks = forward[::997] + backward[::211] + one_row
    for task in tasks:
        result = config_sweep.run_task(task, TRITON_DEVICE)
        assert result["ok"], (config_sweep.describe(task), result)


def test_config_sweep_covers_each_compiled_variant():
    """Each configuration runs problems that hit the variants Triton compiles separately: one group
    (ngroups == 1, the specialization Triton 3.6 miscompiled at 280 columns) and two, an unaligned and a
    16-aligned group size, three programs of rows, and for one-row tiles a single row (M == 1)."""
    cfg = triton_forward.ForwardConfig(block_m=2, block_n=512, num_warps=2, wide=False)
    variants = config_sweep._variants(cfg, set(range(257, 513)))
    assert (257, 2, 5) in variants and (257, 1, 5) in variants  # unaligned, two groups and alone
    assert (496, 1, 5) in variants  # aligned, partly masked last tile, alone
    assert (512, 2, 5) in variants  # aligned, full tiles
    one_row = triton_forward.ForwardConfig(block_m=1, block_n=4096, num_warps=8, wide=False, block_tail=1024)
    assert (5104, 1, 1) in config_sweep._variants(one_row, set(range(4097, 5121)))


def test_config_sweep_reports_a_wrong_kernel():
    """A configuration whose tile misses part of the group gives a wrong result, and the sweep says so."""
    cfg = triton_forward.ForwardConfig(block_m=1, block_n=16, num_warps=1, wide=False)  # a group of 20
    task = ("forward", cfg, 20, 1, 3, (True, False, True, True), "float32")
    result = config_sweep.run_task(task, TRITON_DEVICE)
    assert not result["ok"] and result["worst"] > 1


def test_config_sweep_without_a_gpu_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config_sweep.main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
