"""norm_gated::bwd and the autograd of norm_gated::fwd: gradients against autograd of the float64 reference,
gradcheck, only-needed gradients, opcheck, torch.compile training, determinism, double backward."""

import copy
import itertools
from dataclasses import replace

import pytest
import torch
import triton
from conftest import DEVICES, TRITON_DEVICE
from test_registration import sample_inputs
from torch.utils._python_dispatch import TorchDispatchMode
from utils import GATE_IDS, GATES, OpLog, make_problem, poison_cuda_allocator, record_launches, saturated_gate

import custom_norm
import custom_norm.kernels.backward as triton_backward
import custom_norm.kernels.forward as triton_forward
from custom_norm import norm_gated_reference

# Largest ||g - g_ref|| / ||g_ref|| of a gradient in each dtype: rounding of the result, and float32 math.
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
NAMES = ("x", "weight", "bias", "z")
ALL = [True, True, True, True]  # output_mask of bwd: (dx, dz, dweight, dbias)


def reference_grads(dy, x, weight, bias, z, group_size, norm_before_gate, is_rms_norm, activation, eps=1e-6):
    """Gradients of (x, weight, bias, z) by autograd through the float64 reference on the CPU."""
    leaves = [t.detach().cpu().double().requires_grad_() if t is not None else None for t in (x, weight, bias, z)]
    out, _, _ = norm_gated_reference(*leaves, eps, group_size, norm_before_gate, is_rms_norm, activation)
    out.backward(dy.detach().cpu().double())
    return [t.grad if t is not None else None for t in leaves]


def assert_grads_close(grads, ref_grads, tensors, tol=None, names=NAMES):
    """Each gradient has its tensor's dtype, shape and device, and is close to the reference in norm."""
    for name, g, ref, t in zip(names, grads, ref_grads, tensors, strict=True):
        if t is None:
            assert g is None, name
            continue
        assert g is not None, name
        assert g.dtype == t.dtype and g.shape == t.shape and g.device == t.device, name
        assert torch.isfinite(g).all(), name
        err = ((g.cpu().double() - ref).norm() / ref.norm()).item()
        assert err < (tol or GRAD_TOL[t.dtype]), f"{name}: relative error {err:.2e}"


def op_grads(x, weight, bias, z, dy, group_size, norm_before_gate, is_rms_norm, activation, eps=1e-6):
    """Gradients of (x, weight, bias, z) by autograd through the op (detach keeps the inputs' strides)."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias, z)]
    out, mean, rstd = torch.ops.norm_gated.fwd(*leaves, eps, group_size, norm_before_gate, is_rms_norm, activation)
    assert not mean.requires_grad and not rstd.requires_grad
    out.backward(dy)
    return [t.grad if t is not None else None for t in leaves]


def triton_grads(x, weight, bias, z, dy, group_size, nbg, rms, act, mask=ALL):
    """(dx, dweight, dbias, dz) from the Triton launcher, the statistics from the op's forward."""
    _, mean, rstd = torch.ops.norm_gated.fwd(x, weight, bias, z, 1e-6, group_size, nbg, rms, act)
    poison_cuda_allocator()
    dx, dz, dw, db = triton_backward.norm_gated_bwd_triton(dy, x, weight, bias, z, mean, rstd, group_size, nbg, rms,
                                                           act, list(mask))
    return [dx, dw, db, dz]


# ---- gradcheck: float64, CPU, the whole flag matrix ----

AFFINE = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("affine", AFFINE, ids=["weight-bias", "weight", "bias", "none"])
@pytest.mark.parametrize("group_size", [None, 4], ids=["onegroup", "groups"])
@pytest.mark.parametrize("gate", GATES, ids=GATE_IDS)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_gradcheck(affine, group_size, gate, is_rms_norm):
    has_z, nbg, act = gate
    x, w, b, z = make_problem((2, 3, 8), torch.float64, has_z=has_z, has_weight=affine[0], has_bias=affine[1])
    inputs = tuple(t.requires_grad_() if t is not None else None for t in (x, w, b, z))

    def f(x, w, b, z):
        return torch.ops.norm_gated.fwd(x, w, b, z, 1e-5, group_size, nbg, is_rms_norm, act)[0]

    assert torch.autograd.gradcheck(f, inputs)


# ---- native (CPU) gradients of float32/bfloat16 inputs against the float64 reference ----

@pytest.mark.parametrize("shape,group_size", [((7, 64), None), ((2, 5, 48), 12), ((6, 33), 11), ((40,), 8)],
                         ids=str)
@pytest.mark.parametrize("gate", GATES, ids=GATE_IDS)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_native_grads(shape, group_size, gate, is_rms_norm, dtype):
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, dtype, has_z=has_z)
    dy = torch.randn(shape, dtype=dtype)
    grads = op_grads(x, w, b, z, dy, group_size, nbg, is_rms_norm, act)
    assert_grads_close(grads, reference_grads(dy, x, w, b, z, group_size, nbg, is_rms_norm, act), (x, w, b, z))


@pytest.mark.parametrize("gate", GATES, ids=GATE_IDS)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_native_grads_many_chunks(monkeypatch, gate, is_rms_norm):
    """Chunks of 3 rows (13 rows: a partial last one): every chunk boundary and statistics slice is used."""
    import custom_norm.native as native

    monkeypatch.setattr(native, "CPU_CHUNK_ELEMENTS", 3 * 48)
    has_z, nbg, act = gate
    x, w, b, z = make_problem((13, 48), torch.float32, has_z=has_z)
    dy = torch.randn(13, 48)
    grads = op_grads(x, w, b, z, dy, 16, nbg, is_rms_norm, act)
    assert_grads_close(grads, reference_grads(dy, x, w, b, z, 16, nbg, is_rms_norm, act), (x, w, b, z))


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes(device):
    """bfloat16 x, float32 weight/bias, float16 z: each gradient comes back in its tensor's dtype."""
    x, w, b, _ = make_problem((8, 96), torch.bfloat16, device, weight_dtype=torch.float32)
    z = torch.randn(8, 96, device=device, dtype=torch.float16)
    dy = torch.randn(8, 96, device=device, dtype=torch.bfloat16)
    for nbg in (True, False):
        grads = op_grads(x, w, b, z, dy, 32, nbg, False, "sigmoid")
        ref = reference_grads(dy, x, w, b, z, 32, nbg, False, "sigmoid")
        assert_grads_close(grads, ref, (x, w, b, z), tol=1e-2)
        # float32 weight and bias: their gradients are float32-accurate
        assert_grads_close([None, *grads[1:3], None], [None, *ref[1:3], None], (None, w, b, None), tol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["transposed", "row-strided", "expanded-dy"])
def test_non_contiguous(device, kind):
    x, w, b, z = make_problem((24, 64), torch.float32, device)
    dy = torch.randn(24, 64, device=device)
    if kind == "transposed":
        x, z, dy = (t.reshape(64, 24).T for t in (x, z, dy))
    elif kind == "row-strided":
        x = torch.randn(24, 100, device=device)[:, 10:74]
        dy = torch.randn(24, 128, device=device)[:, ::2]
    else:
        dy = torch.randn(1, 64, device=device).expand(24, 64)
    grads = op_grads(x, w, b, z, dy, 16, False, False, "silu")
    assert_grads_close(grads, reference_grads(dy, x, w, b, z, 16, False, False, "silu"), (x, w, b, z))


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    x, w, b, z = make_problem((0, 3, 32), torch.float32, device)
    dx, dw, db, dz = op_grads(x, w, b, z, torch.empty_like(x), 8, True, False, "silu")
    assert dx.shape == x.shape and dz.shape == z.shape
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


# ---- the Triton backward (GPU, or Triton's interpreter on CPU tensors) ----

TRITON_CASES = [
    # (shape, group_size): masked tails, several groups, one row, many rows
    ((5, 64), None),
    ((37, 100), None),
    ((3, 2, 48), 12),
    ((1, 130), 13),
    ((70, 16), 4),
]


@pytest.mark.parametrize("shape,group_size", TRITON_CASES, ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[2], GATES[3]], ids=[GATE_IDS[0], GATE_IDS[2], GATE_IDS[3]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_kernel(shape, group_size, gate, is_rms_norm, dtype):
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, dtype, TRITON_DEVICE, has_z=has_z)
    dy = torch.randn(shape, dtype=dtype, device=TRITON_DEVICE)
    grads = triton_grads(x, w, b, z, dy, group_size, nbg, is_rms_norm, act)
    ref = reference_grads(dy, x, w, b, z, group_size, nbg, is_rms_norm, act)
    assert_grads_close(grads, ref, (x, w, b, z))


@pytest.mark.parametrize("gate", GATES[1:], ids=GATE_IDS[1:])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_triton_saturated_gate(gate, is_rms_norm):
    """Gates from -120 to 120: both tails of the sigmoid and its flush-to-zero region (z < -87)."""
    has_z, nbg, act = gate
    x, w, b, _ = make_problem((6, 96), torch.float32, TRITON_DEVICE)
    z = saturated_gate(x.shape, TRITON_DEVICE)
    dy = torch.randn(6, 96, dtype=torch.float32, device=TRITON_DEVICE)
    grads = triton_grads(x, w, b, z, dy, 32, nbg, is_rms_norm, act)
    assert_grads_close(grads, reference_grads(dy, x, w, b, z, 32, nbg, is_rms_norm, act), (x, w, b, z))


@pytest.mark.parametrize("gate", [GATES[1], GATES[4]], ids=[GATE_IDS[1], GATE_IDS[4]])
def test_triton_float64_no_affine(gate):
    has_z, nbg, act = gate
    x, _, _, z = make_problem((9, 40), torch.float64, TRITON_DEVICE, has_z=has_z)
    dy = torch.randn(9, 40, dtype=torch.float64, device=TRITON_DEVICE)
    grads = triton_grads(x, None, None, z, dy, 8, nbg, False, act)
    assert_grads_close(grads, reference_grads(dy, x, None, None, z, 8, nbg, False, act), (x, None, None, z))


@pytest.mark.parametrize("shape,group_size", [((3, 200), None), ((2, 300), 100), ((5, 96), 48)], ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[4]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[4]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_triton_wide_kernel(monkeypatch, shape, group_size, gate, is_rms_norm):
    """The chunked path for groups too wide for registers, made to trigger on small groups."""
    monkeypatch.setattr(triton_backward, "MAX_FUSED_BLOCK", 32)
    monkeypatch.setattr(triton_backward, "WIDE_BLOCK", 32)
    gs = group_size or shape[-1]
    assert triton_backward.backward_config(gs, shape[0]).wide
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, torch.float32, TRITON_DEVICE, has_z=has_z, scale=0.1, offset=3.0)
    dy = torch.randn(shape, device=TRITON_DEVICE)
    grads = triton_grads(x, w, b, z, dy, group_size, nbg, is_rms_norm, act)
    assert_grads_close(grads, reference_grads(dy, x, w, b, z, group_size, nbg, is_rms_norm, act), (x, w, b, z))


# (shape, group_size, block_m, head, tail): a group held as a power-of-two head and a tail tile, exact
# (80 = 64 + 16) and masked (70 = 64 + 8, 20 = 16 + 4 over several groups), one or several rows per tile;
# or as one padded tile (48 in 64)
HEAD_TAIL_CASES = [((5, 80), None, 1, 64, 16), ((7, 70), None, 4, 64, 8), ((9, 2, 40), 20, 2, 16, 4),
                   ((6, 2, 48), 48, 2, 64, 0)]


@pytest.mark.parametrize("case", HEAD_TAIL_CASES, ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[4]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[4]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("mask", [ALL, [True, False, True, False], [False, True, False, True]], ids=str)
@pytest.mark.parametrize("reload_tile", [False, True], ids=["held", "reloaded"])
def test_triton_head_tail(case, gate, is_rms_norm, mask, reload_tile):
    """Tiles held as a head and a tail, or one tile (tail 0), kept in registers or loaded again."""
    shape, group_size, block_m, head, tail = case
    cfg = triton_backward.BackwardConfig(block_m, head, num_warps=1, wide=False, programs_per_sm=1, block_tail=tail,
                                         reload_tile=reload_tile)
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, torch.float32, TRITON_DEVICE, has_z=has_z, offset=1.0)
    dy = torch.randn(shape, device=TRITON_DEVICE)
    _, mean, rstd = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)
    poison_cuda_allocator()
    dx, dz, dw, db = triton_backward.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, group_size, nbg, is_rms_norm,
                                                           act, mask, config=cfg)
    ref = reference_grads(dy, x, w, b, z, group_size, nbg, is_rms_norm, act)
    want = [t if m else None for t, m in zip((x, z, w, b), mask, strict=True)]
    assert_grads_close([dx, dw, db, dz], [ref[0], ref[1], ref[2], ref[3]],
                       (want[0], want[2], want[3], want[1]))


@pytest.mark.parametrize("block_m,generic", [(2, True), (1, False)], ids=["several-rows", "one-row"])
def test_head_tail_tiles_of_several_rows_run_the_generic_build(monkeypatch, block_m, generic):
    """As in the forward: head + tail tiles of several rows never run the ngroups-specialized build."""
    launched = record_launches(monkeypatch, triton_backward, ("_BWD", "_BWD_GENERIC"))
    x, w, b, z = make_problem((5, 80), torch.float32, TRITON_DEVICE, has_z=True)
    dy = torch.randn(5, 80, device=TRITON_DEVICE)
    _, mean, rstd = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, None, False, False, "silu")
    cfg = triton_backward.BackwardConfig(block_m, 64, num_warps=1, wide=False, programs_per_sm=1, block_tail=16)
    grads = triton_backward.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, None, False, False, "silu", ALL,
                                                  config=cfg)
    assert launched == ["_BWD_GENERIC" if generic else "_BWD"]
    ref = reference_grads(dy, x, w, b, z, None, False, False, "silu")
    assert_grads_close([grads[0], grads[2], grads[3], grads[1]], list(ref), (x, w, b, z))


@pytest.mark.parametrize("resident,expected_rows", [(None, 4), (3, 3), (9, 4)], ids=str)
def test_backward_grid_is_capped_by_occupancy(monkeypatch, resident, expected_rows):
    """The persistent backward grid holds at most the programs resident at once (one wave): fewer
    programs, fewer rows of affine-gradient partials, the same gradients."""
    monkeypatch.setattr(triton_backward, "_sm_count", lambda device: 1)
    monkeypatch.setattr(triton_backward._BWD, "resident_per_sm", lambda device, args, options: resident)
    shapes = []
    real_empty = torch.empty

    def empty(*size, **kwargs):
        shapes.append(tuple(size[0]) if len(size) == 1 else size)
        return real_empty(*size, **kwargs)

    x, w, b, z = make_problem((40, 32), torch.float32, TRITON_DEVICE)
    dy = torch.randn_like(x)
    _, mean, rstd = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, None, False, False, "silu")
    cfg = triton_backward.BackwardConfig(1, 32, num_warps=1, wide=False, programs_per_sm=4)
    monkeypatch.setattr(torch, "empty", empty)
    dx, dz, dw, db = triton_backward.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, None, False, False, "silu",
                                                           ALL, config=cfg)
    monkeypatch.setattr(torch, "empty", real_empty)
    assert (expected_rows, 32) in shapes  # dw and db partials: one row per program
    assert_grads_close([dx, dw, db, dz], reference_grads(dy, x, w, b, z, None, False, False, "silu"), (x, w, b, z))


# the speed options of BackwardConfig: how a kernel runs, not what it computes
SPEED_OPTIONS = [{"max_registers": 64}, {"prefetch_step": 16}, {"prefetch_step": 64, "loop_stages": 2},
                 {"hold_affine": True}, {"column_sums_once": True, "hold_affine": True}]


@pytest.mark.parametrize("gate", [GATES[1], GATES[3]], ids=[GATE_IDS[1], GATE_IDS[3]])
@pytest.mark.parametrize("options", SPEED_OPTIONS, ids=str)
@pytest.mark.parametrize("block_m", [1, 4], ids=["one-row", "four-rows"])
def test_speed_options_change_nothing_but_speed(monkeypatch, gate, options, block_m):
    """A register cap (Triton's maxnreg: ptxas spills past it), the next tile prefetched into L2, the row
    loop software-pipelined, weight and bias held across the loop, the column sums' rows summed once: gradients
    as accurate as without (two groups as head and tail tiles, several tiles a program, a last tile of fewer
    rows), and bitwise the same, but for dweight and dbias summed in another order (column_sums_once) and the
    pipelined loop over tiles of several rows, where Triton's pipelined code rounds dx a little differently
    (H200, Triton 3.6: up to 1e-6 on values of order 1, as close to the float64 reference)."""
    monkeypatch.setattr(triton_backward, "_sm_count", lambda device: 1)  # one program walks every tile
    has_z, nbg, act = gate
    x, w, b, z = make_problem((11, 160), torch.float32, TRITON_DEVICE)
    dy = torch.randn(11, 160, device=TRITON_DEVICE)
    _, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, 80, nbg, True, act)
    plain = triton_backward.BackwardConfig(block_m, 64, 4, False, 1, 16, block_m == 1)  # two groups of 64 + 16
    grads = {}
    for cfg in (plain, replace(plain, **options)):
        launch = dict(triton_backward._launch_options(cfg, (), True, *ALL, False))
        assert launch.get("maxnreg") == cfg.max_registers
        assert (launch["PREFETCH_STEP"], launch["LOOP_STAGES"], launch["COLUMN_SUMS_ONCE"], launch["HOLD_AFFINE"]) \
            == (cfg.prefetch_step, cfg.loop_stages, cfg.column_sums_once, cfg.hold_affine)
        poison_cuda_allocator()
        grads[cfg] = triton_backward.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, 80, nbg, True, act, ALL,
                                                           config=cfg)
    plain_grads, optioned = grads.values()
    same_dx_dz = not (options.get("loop_stages") and block_m > 1)
    same_dw_db = same_dx_dz and not options.get("column_sums_once")
    exact = (same_dx_dz, same_dx_dz, same_dw_db, same_dw_db)  # dx, dz, dweight, dbias
    assert all(torch.equal(a, c) for a, c, e in zip(plain_grads, optioned, exact, strict=True) if e)
    reference = reference_grads(dy, x, w, b, z, 80, nbg, True, act)
    for got in (plain_grads, optioned):
        assert_grads_close([got[i] for i in (0, 2, 3, 1)], reference, (x, w, b, z))


def test_triton_head_tail_must_cover_the_group():
    x = torch.randn(2, 80, device=TRITON_DEVICE)
    _, mean, rstd = triton_forward.norm_gated_fwd_triton(x, None, None, None, 1e-6, None, True, False, "silu")
    cfg = triton_backward.BackwardConfig(1, 64, num_warps=1, wide=False, block_tail=8)
    with pytest.raises(ValueError, match="whole group of 80 columns"):
        triton_backward.norm_gated_bwd_triton(x, x, None, None, None, mean, rstd, None, True, False, "silu", ALL,
                                              config=cfg)


def test_backward_rule_prefetches_where_it_was_timed_faster():
    """The rule's speed options (H200, session 8; BENCHMARKS.md): groups up to 1024 columns prefetch the next
    tile one address a thread, 4097-5120 columns every 16 elements with the row loop in two stages, and
    2048 columns and wider groups nothing (one group of 4096 ran slower with it)."""
    for group_size, rows in [(128, 524288), (256, 16384), (1000, 16384), (1024, 7), (512, 1)]:
        cfg = triton_backward.backward_config(group_size, rows)
        assert cfg.prefetch_step * 32 * cfg.num_warps == cfg.block_m * cfg.block_n and cfg.loop_stages == 0
    assert triton_backward.backward_config(4, 1).prefetch_step == 0  # fewer elements than threads
    for group_size in (2048, 4096, 8192, 65536):
        cfg = triton_backward.backward_config(group_size, 16384)
        assert (cfg.prefetch_step, cfg.loop_stages) == (0, 0)
    cfg = triton_backward.backward_config(5120, 16384)
    assert (cfg.block_n, cfg.block_tail, cfg.prefetch_step, cfg.loop_stages) == (4096, 1024, 16, 2)


def test_backward_rule_warps_of_one_row_tiles():
    """One-row tiles: 16 elements a thread for groups of 1025-2047 (padded to 2048) and 2049-4096 columns, 8 for
    a group of 2048 (H200, sessions 5 and 13)."""
    for group_size, warps in [(1025, 4), (1280, 4), (1536, 4), (2047, 4), (2048, 8), (2560, 8), (3072, 8),
                              (4096, 8)]:
        cfg = triton_backward.backward_config(group_size, 16384)
        assert (cfg.block_m, cfg.block_tail, cfg.num_warps) == (1, 0, warps), group_size


def test_backward_rule_keeps_column_sums_as_tiles_where_it_was_timed_faster():
    """Tiles of several rows of 256 and 512 columns keep the dweight/dbias sums as tiles and hold weight and
    bias, 512 without the prefetch; narrower tiles and one-row tiles do neither (H200, session 9)."""
    expected = {  # group size: (block_m, block_n, the two options, prefetch_step)
        256: (4, 256, True, 16), 200: (4, 256, True, 16), 512: (2, 512, True, 0), 300: (2, 512, True, 0),
        128: (8, 128, False, 16), 64: (16, 64, False, 16), 1024: (1, 1024, False, 8), 2048: (1, 2048, False, 0)}
    for group_size, (block_m, block_n, options, prefetch_step) in expected.items():
        cfg = triton_backward.backward_config(group_size, 16384)
        assert (cfg.block_m, cfg.block_n, cfg.column_sums_once, cfg.hold_affine, cfg.prefetch_step) == (
            block_m, block_n, options, options, prefetch_step), group_size
    assert not triton_backward.backward_config(512, 1).column_sums_once  # one row: a one-row tile


@pytest.mark.parametrize("shape,group_size,dtype", [((70, 45), 15, torch.float32), ((3, 30, 33), None, torch.bfloat16),
                                                     ((70, 40), 8, torch.float64)], ids=str)
def test_partials_summed_by_kernel(monkeypatch, shape, group_size, dtype):
    """dweight and dbias of wide rows are summed from the per-program partials by _sum_partials_kernel (here
    from one column on, with one-row tiles: up to 70 partial rows, more than its 64-row tile, and columns
    that are not a multiple of its 32)."""
    monkeypatch.setattr(triton_backward, "SUM_KERNEL_MIN_COLUMNS", 1)
    monkeypatch.setattr(triton_backward, "TILE_ELEMENTS", 16)
    launched = record_launches(monkeypatch, triton_backward, ("_SUM_PARTIALS",))
    x, w, b, z = make_problem(shape, dtype, TRITON_DEVICE)
    dy = torch.randn(shape, device=TRITON_DEVICE, dtype=dtype)
    grads = triton_grads(x, w, b, z, dy, group_size, False, False, "silu")
    assert launched == ["_SUM_PARTIALS", "_SUM_PARTIALS"]
    assert_grads_close(grads, reference_grads(dy, x, w, b, z, group_size, False, False, "silu"), (x, w, b, z))


@pytest.mark.parametrize("wide", [False, True], ids=["fused", "wide"])
def test_triton_persistent_loop(monkeypatch, wide):
    """Few programs, many small tiles: each program loops over several row tiles and masked tails."""
    monkeypatch.setattr(triton_backward, "TILE_ELEMENTS", 64)
    monkeypatch.setattr(triton_backward, "_sm_count", lambda device: 1)
    if wide:
        monkeypatch.setattr(triton_backward, "MAX_FUSED_BLOCK", 16)
        monkeypatch.setattr(triton_backward, "WIDE_BLOCK", 16)
    x, w, b, z = make_problem((30, 48), torch.float32, TRITON_DEVICE)
    dy = torch.randn(30, 48, device=TRITON_DEVICE)
    cfg = triton_backward.backward_config(24, 30)
    chunks = triton.cdiv(24, cfg.block_n)
    row_programs = cfg.programs_per_sm // (2 * chunks)  # 1 SM, 2 groups
    assert cfg.wide == wide and triton.cdiv(30, cfg.block_m) > row_programs  # more tiles than row programs
    grads = triton_grads(x, w, b, z, dy, 24, False, False, "silu")
    assert_grads_close(grads, reference_grads(dy, x, w, b, z, 24, False, False, "silu"), (x, w, b, z))


@pytest.mark.parametrize("kind", ["transposed", "row-strided", "expanded-dy"])
def test_triton_strides(kind):
    if kind == "transposed":
        x = torch.randn(64, 24, device=TRITON_DEVICE).T
        dy = torch.randn(64, 24, device=TRITON_DEVICE).T
    elif kind == "row-strided":
        x = torch.randn(24, 100, device=TRITON_DEVICE)[:, 10:74]
        dy = torch.randn(24, 200, device=TRITON_DEVICE)[:, 50:114]
    else:
        x = torch.randn(24, 64, device=TRITON_DEVICE)
        dy = torch.randn(1, 64, device=TRITON_DEVICE).expand(24, 64)  # row stride 0
    z = torch.randn(64, 24, device=TRITON_DEVICE).T
    w = torch.randn(64, device=TRITON_DEVICE)
    grads = triton_grads(x, w, None, z, dy, 16, True, True, "silu")
    assert_grads_close(grads, reference_grads(dy, x, w, None, z, 16, True, True, "silu"), (x, w, None, z))


def test_triton_empty():
    x, w, b, z = make_problem((0, 64), torch.float32, TRITON_DEVICE)
    dx, dw, db, dz = triton_grads(x, w, b, z, torch.empty_like(x), 16, True, False, "silu")
    assert dx.shape == (0, 64) and dz.shape == (0, 64)
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


# ---- only the needed gradients ----

MASKS = [list(m) for m in itertools.product([False, True], repeat=4)]
# Under Triton's interpreter a launch is slow: single gradients, the gate's pair, and dz with the affine pair.
TRITON_MASKS = [[True, False, False, False], [False, True, False, False], [False, False, True, False],
                [False, False, False, True], [True, True, False, False], [False, True, True, True]]


@pytest.mark.parametrize("impl", ["native", "triton"])
@pytest.mark.parametrize("wide", [False, True], ids=["fused", "wide"])
@pytest.mark.parametrize("nbg", [True, False], ids=["after", "before"])
def test_output_mask(monkeypatch, impl, wide, nbg):
    """Each subset of (dx, dz, dweight, dbias) is what the full computation gives; the others are None."""
    if wide:
        monkeypatch.setattr(triton_backward, "MAX_FUSED_BLOCK", 16)
        monkeypatch.setattr(triton_backward, "WIDE_BLOCK", 16)
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    bwd = triton_backward.norm_gated_bwd_triton if impl == "triton" else torch.ops.norm_gated.bwd
    x, w, b, z = make_problem((6, 48), torch.float32, device)
    dy = torch.randn(6, 48, device=device)
    _, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, 24, nbg, False, "silu")
    full = bwd(dy, x, w, b, z, mean, rstd, 24, nbg, False, "silu", ALL)
    ref = reference_grads(dy, x, w, b, z, 24, nbg, False, "silu")
    assert_grads_close([full[0], full[2], full[3], full[1]], ref, (x, w, b, z))
    for mask in TRITON_MASKS if impl == "triton" else MASKS:
        part = bwd(dy, x, w, b, z, mean, rstd, 24, nbg, False, "silu", mask)
        for wanted, g, g_full in zip(mask, part, full, strict=True):
            if wanted:
                torch.testing.assert_close(g, g_full, rtol=1e-6, atol=1e-6)
            else:
                assert g is None


def test_output_mask_absent_tensors():
    """Gradients of absent z, weight and bias are None even when asked for."""
    x = torch.randn(4, 32)
    _, mean, rstd = torch.ops.norm_gated.fwd(x, None, None, None, 1e-6, None, True, True, "silu")
    dx, dz, dw, db = torch.ops.norm_gated.bwd(torch.randn(4, 32), x, None, None, None, mean, rstd, None, True, True,
                                              "silu", ALL)
    assert dx.shape == x.shape and dz is None and dw is None and db is None


class _RecordBwd(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.norm_gated.bwd.default:
            self.calls.append((list(args[-1]), out))
        return out


@pytest.mark.parametrize("needs", [(True, False, False, False), (False, True, True, False), (False, False, False, True),
                                   (True, True, True, True), (False, True, False, True)], ids=str)
def test_autograd_computes_only_needed(needs):
    """Autograd asks bwd only for the gradients of inputs that require grad, and bwd computes only those."""
    x, w, b, z = make_problem((5, 32), torch.float32)
    tensors = [t.requires_grad_(need) for t, need in zip((x, w, b, z), needs, strict=True)]
    out = custom_norm.layernorm_fn(*tensors, group_size=8, norm_before_gate=False)
    dy = torch.randn_like(out)
    with _RecordBwd() as mode:
        grads = torch.autograd.grad(out, [t for t in tensors if t.requires_grad], dy)
    ((mask, outs),) = mode.calls
    need_x, need_w, need_b, need_z = needs
    assert mask == [need_x, need_z, need_w, need_b]
    assert [o is not None for o in outs] == mask
    ref = reference_grads(dy, x, w, b, z, 8, False, False, "silu")
    needed = [i for i, need in enumerate(needs) if need]
    assert_grads_close(grads, [ref[i] for i in needed], [tensors[i] for i in needed],
                       names=[NAMES[i] for i in needed])


@pytest.mark.parametrize("entry", ["op", "layernorm_fn"])
@pytest.mark.parametrize("device", DEVICES)
def test_backward_materializes_no_gradient_for_the_statistics(device, entry):
    """mean and rstd have no gradient: autograd does not fill zero tensors for them before the backward (two
    extra kernels a call); the backward is one call of the op and nothing else."""
    x, w, _, z = make_problem((6, 40), torch.float32, device)
    tensors = [t.requires_grad_() for t in (x, w, z)]
    if entry == "op":
        out, mean, rstd = torch.ops.norm_gated.fwd(x, w, None, z, 1e-6, 8, False, False, "silu")
    else:
        out = custom_norm.layernorm_fn(x, w, None, z, group_size=8, norm_before_gate=False)
    dy = torch.randn_like(out)
    with OpLog() as mode:
        grads = torch.autograd.grad(out, tensors, dy)
    assert mode.ops == [torch.ops.norm_gated.bwd.default]
    assert_grads_close([grads[0], grads[1], None, grads[2]],
                       reference_grads(dy, x, w, None, z, 8, False, False, "silu"), (x, w, None, z))


# ---- opcheck: autograd registration, fake kernels, aot_dispatch ----

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fwd_requires_grad(device):
    # schema and fake-kernel checks of fwd are test_registration's; these two exercise the autograd formula
    for args, kwargs in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(torch.ops.norm_gated.fwd.default, args, kwargs,
                              test_utils=("test_autograd_registration", "test_aot_dispatch_dynamic"))


def bwd_samples(device):
    """Arguments of bwd from the forward's samples, with a different output_mask for each."""
    masks = itertools.cycle([ALL, [True, False, True, False], [False, True, False, True], [True, True, False, False]])
    samples = []
    for (x, w, b, z), kwargs in sample_inputs(device):
        kw = dict(dict(eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False, activation="silu"),
                  **kwargs)
        _, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, **kw)
        samples.append((torch.randn_like(x), x, w, b, z, mean, rstd, kw["group_size"], kw["norm_before_gate"],
                        kw["is_rms_norm"], kw["activation"], next(masks)))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_bwd(device):
    for args in bwd_samples(device):
        torch.library.opcheck(torch.ops.norm_gated.bwd.default, args)


def test_bwd_schema():
    assert str(torch.ops.norm_gated.bwd.default._schema) == (
        "norm_gated::bwd(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor? z, Tensor mean, Tensor rstd, "
        "SymInt? group_size, bool norm_before_gate, bool is_rms_norm, str activation, bool[4] output_mask) "
        "-> (Tensor?, Tensor?, Tensor?, Tensor?)"
    )


def _bad_bwd_inputs():
    x, w, b, z = make_problem((5, 32), torch.float32)
    _, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, 8, True, False, "silu")
    dy = torch.randn(5, 32)
    ok = [dy, x, w, b, z, mean, rstd, 8, True, False, "silu", ALL]
    return [
        # (index of the argument, its bad value, exception, word the message must contain)
        (0, torch.randn(5, 16), ValueError, "dy"),
        (0, dy.int(), TypeError, "dy"),
        (5, mean[:2], ValueError, "mean"),
        (6, rstd.double(), ValueError, "rstd"),
        (6, rstd.T, ValueError, "rstd"),
        (7, 16, ValueError, "rstd"),  # statistics of 2 groups, but 4 said
        (9, True, ValueError, "mean"),  # LayerNorm statistics passed as RMSNorm's
        (11, [True, True], ValueError, "output_mask"),
        (4, torch.randn(5, 8), ValueError, "z"),
    ], ok


@pytest.mark.parametrize("fake", [False, True], ids=["eager", "fake"])
@pytest.mark.parametrize("case", range(9))
def test_bwd_bad_input(case, fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    cases, ok = _bad_bwd_inputs()
    index, value, exc, word = cases[case]
    args = list(ok)
    args[index] = value
    if fake:
        with FakeTensorMode() as mode:
            args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises(exc, match=word):
                torch.ops.norm_gated.bwd(*args)
    else:
        with pytest.raises(exc, match=word):
            torch.ops.norm_gated.bwd(*args)


# ---- double backward ----

@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_raises(device):
    x, w, b, z = make_problem((4, 32), torch.float64, device)
    for t in (x, w, z):
        t.requires_grad_()
    out = custom_norm.layernorm_fn(x, w, b, z)
    (dx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        dx.sum().backward()


# ---- a training step under torch.compile ----

class _TinyModel(torch.nn.Module):
    """Linear -> gated LayerNorm (groups, gate after) -> Linear -> gated RMSNorm (gate before) -> Linear."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(16, 96)
        self.ln = custom_norm.LayerNormGated(48, group_size=16, norm_before_gate=True)
        self.mid = torch.nn.Linear(48, 64)
        self.rms = custom_norm.RMSNormGated(32, norm_before_gate=False, activation="sigmoid")
        self.out = torch.nn.Linear(32, 4)
        with torch.no_grad():
            for p in (self.ln.weight, self.ln.bias, self.rms.weight):
                p.add_(0.3 * torch.randn_like(p))

    def forward(self, u):
        x, z = self.inp(u).chunk(2, dim=-1)  # non-contiguous views
        x, z = self.mid(self.ln(x, z)).chunk(2, dim=-1)
        return self.out(self.rms(x, z))


def _train_step(model, forward, u, target):
    loss = torch.nn.functional.mse_loss(forward(u), target)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step(backend):
    torch._dynamo.reset()
    model = _TinyModel()
    compiled_model = copy.deepcopy(model)
    u = torch.randn(3, 7, 16)
    target = torch.randn(3, 7, 4)
    loss, grads = _train_step(model, model, u, target)
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    c_loss, c_grads = _train_step(compiled_model, compiled, u, target)
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == c_grads.keys()
    for name, g in grads.items():
        assert g is not None and g.norm() > 0, name
        torch.testing.assert_close(c_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


# ---- determinism ----

def _affine_grads(bwd, device, wide=False):
    x, w, b, z = make_problem((100, 96), torch.bfloat16, device)
    dy = torch.randn(100, 96, device=device, dtype=torch.bfloat16)
    _, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, 32, False, False, "silu")
    return [bwd(dy, x, w, b, z, mean, rstd, 32, False, False, "silu", [False, False, True, True])
            for _ in range(2)], (dy, x, w, b, z)


@pytest.mark.parametrize("impl", ["native", "triton", "triton-wide"])
def test_affine_grads_deterministic(monkeypatch, impl):
    if impl == "triton-wide":
        monkeypatch.setattr(triton_backward, "MAX_FUSED_BLOCK", 16)
        monkeypatch.setattr(triton_backward, "WIDE_BLOCK", 16)
    monkeypatch.setattr(triton_backward, "TILE_ELEMENTS", 256)  # many tiles per program
    device = "cpu" if impl == "native" else TRITON_DEVICE
    bwd = torch.ops.norm_gated.bwd if impl == "native" else triton_backward.norm_gated_bwd_triton
    (first, second), (dy, x, w, b, z) = _affine_grads(bwd, device)
    for g1, g2 in zip(first[2:], second[2:], strict=True):
        assert torch.equal(g1, g2)
    ref = reference_grads(dy, x, w, b, z, 32, False, False, "silu")
    assert_grads_close([None, *first[2:], None], [None, *ref[1:3], None], (None, w, b, None))

