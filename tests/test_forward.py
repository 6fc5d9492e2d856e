"""norm_gated::fwd against the float64 reference: the native path, and the Triton kernels."""

import itertools
from dataclasses import replace

import pytest
import torch
import triton
from conftest import DEVICES, TRITON_DEVICE
from utils import (
    GATE_IDS,
    GATES,
    assert_matches_reference,
    make_problem,
    poison_cuda_allocator,
    record_grids,
    record_launches,
)

import custom_norm.kernels.forward as triton_forward

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (shape, group_size): 2-D, 3-D, groups, M = 0, N = 1, odd N, one row, a 1-D x.
SHAPES = [
    ((7, 64), None),
    ((7, 64), 16),
    ((2, 3, 48), 12),
    ((0, 32), None),
    ((3, 0, 32), 8),
    ((5, 1), None),
    ((6, 33), 11),
    ((1, 37), None),
    ((40,), 8),
]


def _run_op(x, weight, bias, z, gs, nbg, rms, act, eps=1e-6):
    poison_cuda_allocator()
    return torch.ops.norm_gated.fwd(x, weight, bias, z, eps, gs, nbg, rms, act)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,group_size", SHAPES, ids=str)
@pytest.mark.parametrize("gate", GATES, ids=GATE_IDS)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
def test_matrix(device, shape, group_size, gate, is_rms_norm, dtype, has_bias):
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, dtype, device, has_z=has_z, has_bias=has_bias)
    inputs = [t.clone() if t is not None else None for t in (x, w, b, z)]
    result = _run_op(x, w, b, z, group_size, nbg, is_rms_norm, act)
    assert_matches_reference(result, x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)
    for before, after in zip(inputs, (x, w, b, z), strict=True):
        if before is not None:
            assert torch.equal(before, after), "an input was modified"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_no_weight_no_bias(device, is_rms_norm):
    x, _, _, z = make_problem((9, 40), torch.float32, device)
    result = _run_op(x, None, None, z, 8, False, is_rms_norm, "silu")
    assert_matches_reference(result, x, None, None, z, 1e-6, 8, False, is_rms_norm, "silu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["transposed", "row-strided", "z-other-strides", "expanded-weight"])
def test_non_contiguous(device, kind):
    base, w, b, z = make_problem((24, 64), torch.float32, device)
    if kind == "transposed":
        x = base.reshape(64, 24).T  # (24, 64) with column stride 24
        z = z.reshape(64, 24).T
    elif kind == "row-strided":
        x = torch.randn(24, 100, device=device)[:, 10:74]
    elif kind == "z-other-strides":
        x = base
        z = torch.randn(64, 24, device=device).T
    else:
        x = base
        w = torch.randn(1, device=device).expand(64)
    assert not x.is_contiguous() or not z.is_contiguous() or not w.is_contiguous()
    result = _run_op(x, w, b, z, 16, True, False, "silu")
    assert_matches_reference(result, x, w, b, z, 1e-6, 16, True, False, "silu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16])
def test_mixed_dtypes(device, x_dtype):
    """float32 weight and bias with half-precision x; z in yet another dtype."""
    x, w, b, _ = make_problem((8, 96), x_dtype, device, weight_dtype=torch.float32)
    z = torch.randn(8, 96, device=device, dtype=torch.float32)
    result = _run_op(x, w, b, z, 32, False, False, "sigmoid")
    assert_matches_reference(result, x, w, b, z, 1e-6, 32, False, False, "sigmoid")


@pytest.mark.parametrize("device", DEVICES)
def test_layernorm_large_offset(device):
    x, w, b, z = make_problem((16, 256), torch.float32, device, scale=0.01, offset=5.0)
    result = _run_op(x, w, b, z, None, True, False, "silu", eps=1e-6)
    # float32 rounding of the mean (ulp(5) / spread 0.01) bounds the error near 1e-4; the textbook
    # E[x^2] - E[x]^2 would be off by about 1e-2 here.
    assert_matches_reference(result, x, w, b, z, 1e-6, None, True, False, "silu", out_tol=(1e-3, 1e-3))


# ---- the Triton kernels themselves (GPU, or Triton's interpreter on CPU tensors) ----

TRITON_CASES = [
    # (shape, group_size): masked tails, several groups, one row, many rows
    ((5, 64), None),
    ((37, 100), None),
    ((6, 96), 32),
    ((3, 2, 48), 12),
    ((1, 130), 13),
    ((70, 16), 4),
    # groups that are not a power of two: in one-row tiles split into an exact (80 = 64 + 16) or masked
    # (70 = 64 + 8) head + tail, in tiles of several rows padded to a power of two
    ((1, 80), None),
    ((1, 140), 70),
    ((5, 80), None),
    ((3, 140), 70),
    # one group with a masked tail over several rows (the tiles Triton 3.6 miscompiled here are forced in
    # test_triton_head_tail_of_several_rows: the rule no longer chooses them)
    ((2, 280), None),
    ((5, 273), None),
]


@pytest.mark.parametrize("shape,group_size", TRITON_CASES, ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[4]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[4]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_triton_kernel(shape, group_size, gate, is_rms_norm, dtype):
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, dtype, TRITON_DEVICE, has_z=has_z)
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)
    assert_matches_reference(result, x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)


@pytest.mark.parametrize("shape,group_size", [((3, 200), None), ((2, 300), 100), ((4, 96), 48)], ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[2], GATES[3]], ids=[GATE_IDS[0], GATE_IDS[2], GATE_IDS[3]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_triton_wide_kernel(monkeypatch, shape, group_size, gate, is_rms_norm):
    """The rule's kernel for groups too wide for registers (split), made to trigger on small groups."""
    monkeypatch.setattr(triton_forward, "MAX_FUSED_BLOCK", 32)
    monkeypatch.setattr(triton_forward, "SPLIT_BLOCK", 32)
    gs = group_size or shape[-1]
    assert triton_forward.forward_config(gs, 4).wide
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, torch.float32, TRITON_DEVICE, has_z=has_z, scale=0.1, offset=3.0)
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)
    assert_matches_reference(result, x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)


@pytest.mark.parametrize("sms,programs", [(1, 2), (2, 4), (100, 12)], ids=["two", "four", "one-per-pair"])
@pytest.mark.parametrize("gate", [GATES[0], GATES[2], GATES[3]], ids=[GATE_IDS[0], GATE_IDS[2], GATE_IDS[3]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_triton_wide_kernel_persistent(monkeypatch, sms, programs, gate, is_rms_norm):
    """The wide kernel on a persistent grid (programs_per_sm x SMs programs, at most one per (row, group)
    pair, each taking every programs-th pair) gives bitwise the result of a program per pair."""
    calls = record_grids(monkeypatch, triton_forward._FWD_WIDE, "PERSISTENT")
    monkeypatch.setattr(triton_forward, "sm_count", lambda device: sms)
    has_z, nbg, act = gate
    x, w, b, z = make_problem((6, 200), torch.float32, TRITON_DEVICE, has_z=has_z, scale=0.1, offset=3.0)
    cfg = triton_forward.ForwardConfig(1, 32, 1, True, programs_per_sm=2)  # 6 rows x 2 groups of 100
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act, config=cfg)
    assert calls == [(programs, True)]
    assert_matches_reference(result, x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act)
    plain = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act,
                                                 config=triton_forward.ForwardConfig(1, 32, 1, True))
    assert calls[1] == (12, False)
    for a, c in zip(result, plain, strict=True):
        assert torch.equal(a, c)


WIDE_OPTIONS = {  # ForwardConfig options of the looped kernel
    "reverse": {"reverse_pass2": True},
    "hints": {"l2_hints": True},
    "reverse+hints": {"reverse_pass2": True, "l2_hints": True},
    "reduce-once": {"reduce_once": True},
    "reduce-once+hints": {"reduce_once": True, "l2_hints": True},
    "prefetch": {"prefetch_step": 8},  # four addresses a chunk
    "prefetch+reverse+hints": {"prefetch_step": 1, "reverse_pass2": True, "l2_hints": True},  # the rule's, gate after
    "store-hint": {"store_hint": True},
    "store-hint+reduce-once+hints": {"store_hint": True, "reduce_once": True, "l2_hints": True},
}


@pytest.mark.parametrize("options", WIDE_OPTIONS.values(), ids=WIDE_OPTIONS.keys())
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[3]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[3]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_triton_wide_kernel_options(options, gate, is_rms_norm):
    """The looped kernel's options match the reference (100 columns in chunks of 32: a masked last chunk);
    those that change no reduction (pass 2 walked backwards, L2 hints, reduce_once on LayerNorm, which
    ignores it) give bitwise the plain kernel's result."""
    cfg = triton_forward.ForwardConfig(1, 32, 1, True, **options)
    has_z, nbg, act = gate
    x, w, b, z = make_problem((3, 2, 100), torch.float32, TRITON_DEVICE, has_z=has_z, scale=0.1, offset=3.0)
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act, config=cfg)
    assert_matches_reference(result, x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act)
    if not (is_rms_norm and cfg.reduce_once):
        plain = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act,
                                                     config=triton_forward.ForwardConfig(1, 32, 1, True))
        for a, c in zip(result, plain, strict=True):
            assert torch.equal(a, c)


# (shape, group_size, part columns): parts of a partial last part, one part, groups of one value, several groups
SPLIT_CASES = [((3, 200), 100, 32), ((5, 100), None, 32), ((2, 96), 48, 16), ((4, 33), None, 32),
               ((3, 8), 1, 16), ((2, 3, 64), 64, 64)]


@pytest.mark.parametrize("shape,group_size,part", SPLIT_CASES, ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[3], GATES[4]],
                         ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[3], GATE_IDS[4]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_triton_split_kernel(shape, group_size, part, gate, is_rms_norm, dtype):
    """Groups split into parts of ``part`` columns, one program a part, statistics exchanged (one cooperative
    launch on a GPU; statistics then output, two launches, under the interpreter)."""
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, dtype, TRITON_DEVICE, has_z=has_z, scale=0.1, offset=3.0)
    cfg = triton_forward.ForwardConfig(1, part, 1, True, split=True)
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act, config=cfg)
    assert_matches_reference(result, x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)


@pytest.mark.parametrize("sms,programs", [(1, 4), (2, 8), (100, 48)], ids=["four", "eight", "one-per-part"])
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[3]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[3]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_triton_split_kernel_grid(monkeypatch, sms, programs, gate, is_rms_norm):
    """The split kernel on grids of fewer programs than parts (each taking every programs-th part, a
    multiple of the parts of a group) gives bitwise the result of a program per part; on a GPU it runs in one
    launch when the grid can be co-resident (here it can), else in two (no SMs to hold any)."""
    calls = record_grids(monkeypatch, triton_forward._FWD_SPLIT, "STAGE")
    monkeypatch.setattr(triton_forward, "sm_count", lambda device: sms)
    has_z, nbg, act = gate
    x, w, b, z = make_problem((6, 200), torch.float32, TRITON_DEVICE, has_z=has_z, scale=0.1, offset=3.0)
    cfg = triton_forward.ForwardConfig(1, 32, 1, True, programs_per_sm=4, split=True)  # 6 x 2 groups x 4 parts
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act, config=cfg)
    assert calls == ([(programs, 0)] if TRITON_DEVICE == "cuda" else [(programs, 1), (programs, 2)])
    assert_matches_reference(result, x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act)
    monkeypatch.setattr(triton_forward, "sm_count", lambda device: 0)  # two launches, a program per part
    separate = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, nbg, is_rms_norm, act,
                                                    config=triton_forward.ForwardConfig(1, 32, 1, True, split=True))
    assert calls[-2:] == [(48, 1), (48, 2)]
    for a, c in zip(result, separate, strict=True):
        assert torch.equal(a, c)


def test_split_kernel_falls_back_to_two_launches_when_the_cooperative_one_is_refused(monkeypatch):
    """A driver that refuses the one cooperative launch (a grid too large to be co-resident, as under MPS with a
    share of the multiprocessors): the same call runs as two launches, right, and later calls on that device go
    straight to two launches. Any other launch error propagates."""
    launches = []
    real_launch = triton_forward._FWD_SPLIT.launch

    def launch(device, grid, args, options):
        stage = dict(options)["STAGE"]
        launches.append(stage)
        if stage == 0:
            raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")
        real_launch(device, grid, args, options)

    monkeypatch.setattr(triton_forward._FWD_SPLIT, "launch", launch)
    monkeypatch.setattr(triton_forward._FWD_SPLIT, "resident_per_sm", lambda *a: 2)
    monkeypatch.setattr(triton_forward, "COOPERATIVE_REFUSED", set())
    refused = triton_forward.COOPERATIVE_REFUSED
    monkeypatch.setattr(triton_forward, "cooperative_launch_possible", lambda device: device not in refused)
    x, w, b, z = make_problem((3, 200), torch.float32, TRITON_DEVICE, scale=0.1, offset=3.0)
    cfg = triton_forward.ForwardConfig(1, 32, 1, True, split=True)
    for expected in ([0, 1, 2], [1, 2]):
        launches.clear()
        poison_cuda_allocator()
        result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, True, False, "silu", config=cfg)
        assert launches == expected
        assert_matches_reference(result, x, w, b, z, 1e-6, 100, True, False, "silu")
    refused.clear()
    monkeypatch.setattr(triton_forward._FWD_SPLIT, "launch", lambda *a: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 100, True, False, "silu", config=cfg)
    assert not refused


@pytest.mark.skipif(TRITON_DEVICE != "cuda", reason="CUDA graphs")
def test_split_kernel_in_a_cuda_graph():
    """The one-launch split kernel (its counters zeroed by a memset in the graph) replays right on new inputs."""
    x, w, b, z = make_problem((64, 4096), torch.bfloat16, "cuda", scale=0.5, offset=1.0)
    cfg = triton_forward.ForwardConfig(1, 1024, 4, True, split=True)
    run = lambda: triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, None, True, True, "silu", config=cfg)  # noqa: E731
    run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        z.copy_(torch.randn_like(z))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches_reference(captured, x, w, b, z, 1e-6, None, True, True, "silu")
        for a, c in zip(captured, run(), strict=True):
            assert torch.equal(a, c)


@pytest.mark.skipif(TRITON_DEVICE == "cuda", reason="records the interpreter's prefetch addresses (on a GPU the "
                    "prefetch is an instruction; test_wide_groups_cuda runs the rule's prefetching kernel)")
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[3]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[3]])
def test_wide_kernel_prefetches_the_next_chunk_of_its_own_group(monkeypatch, reverse, gate):
    """The looped kernel's prefetch asks for the chunk after the one each pass loads, in that pass's order, of
    the tensors that pass reads (pass 1: x, and z when the gate comes before the norm; pass 2: x and z), and
    only for addresses inside the program's row and group (3 rows x 2 groups of 100 columns, chunks of 32)."""
    has_z, nbg, act = gate
    rows, group_size, ngroups, chunk = 3, 100, 2, 32
    x, w, b, z = make_problem((rows, group_size * ngroups), torch.float32, TRITON_DEVICE, has_z=has_z)
    recorded = []
    monkeypatch.setattr(triton_forward, "prefetch_l2", lambda ptrs: recorded.append(ptrs.handle.data.copy()))
    cfg = triton_forward.ForwardConfig(1, chunk, 1, True, prefetch_step=8, reverse_pass2=reverse)
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, group_size, nbg, True, act, config=cfg)
    assert_matches_reference(result, x, w, b, z, 1e-6, group_size, nbg, True, act)

    tensors = {"x": x, "z": z} if has_z else {"x": x}
    got = []
    for addresses in recorded:
        name = next(n for n, t in tensors.items() if t.data_ptr() <= addresses.min() < t.data_ptr() + t.nbytes)
        elements = (addresses.astype("int64") - tensors[name].data_ptr()) // 4
        row, col = elements // (group_size * ngroups), elements % (group_size * ngroups)
        group, in_group = col // group_size, col % group_size
        assert len(set(row.tolist())) == 1 and len(set(group.tolist())) == 1, "one call, one row and group"
        assert elements.max() < tensors[name].numel()
        assert in_group.min() % chunk == 0 and in_group.max() < min(in_group.min() + chunk, group_size)
        got.append((name, int(row[0]), int(group[0]), int(in_group.min()) // chunk))
    chunks = -(-group_size // chunk)
    pass1 = [(n, c) for c in range(1, chunks) for n in (["x", "z"] if has_z and not nbg else ["x"])]
    pass2_order = list(range(chunks - 1, -1, -1) if reverse else range(chunks))
    pass2 = [(n, c) for c in pass2_order[1:] for n in tensors]
    expected = [(n, row, group, c) for row in range(rows) for group in range(ngroups) for n, c in pass1 + pass2]
    assert sorted(got) == sorted(expected)


def test_head_tail_split_is_used_for_one_row_tiles_only():
    many = triton_forward.FEW_ROWS + 1  # past decode sizes
    assert triton_forward.forward_config(5120, many).block_tail == 1024
    assert triton_forward.forward_config(12288, 1).block_tail == 4096  # at decode, only past DECODE_PADDED_BLOCK
    for rows in (5, many):
        cfg = triton_forward.forward_config(80, rows)
        assert cfg.block_tail == 0 and cfg.block_m > 1


def test_decode_tiles_pad_groups_up_to_decode_padded_block():
    """At most FEW_ROWS rows, a group is padded to a power of two (one reduction a row) up to
    DECODE_PADDED_BLOCK columns, 8 elements a thread; wider groups keep a head and a tail."""
    limit = triton_forward.DECODE_PADDED_BLOCK
    for rows in (1, 32, triton_forward.FEW_ROWS):
        for group_size, padded in [(80, 128), (1280, 2048), (1536, 2048), (3072, 4096), (5120, 8192),
                                   (limit - 1024, limit)]:
            cfg = triton_forward.forward_config(group_size, rows, gate_after_norm=group_size == 3072)
            assert (cfg.block_n, cfg.block_tail) == (padded, 0)
            assert cfg.num_warps == max(4, min(32, cfg.block_m * padded // 256))
        cfg = triton_forward.forward_config(limit + limit // 2, rows)
        assert (cfg.block_m, cfg.block_n, cfg.block_tail, cfg.num_warps) == (1, limit, limit // 2, 32)


def test_head_tail_tiles_below_4096_columns_need_many_rows():
    """One-row tiles of a group of 1025-4095 columns that a head and a tail hold in fewer lanes: from
    SPLIT_MIN_ROWS rows split, at 16 elements of the head a thread; with fewer rows padded, at 8 elements a
    thread (decode tiles too). Wider splits and powers of two keep warps counted on the padded width."""
    many, between = triton_forward.SPLIT_MIN_ROWS, triton_forward.SPLIT_MIN_ROWS - 1
    assert triton_forward.FEW_ROWS < between and many <= 2048  # forward_config caps the rows it passes at 2048
    for group_size, head, tail, warps, padded_warps in [
            (1280, 1024, 256, 2, 8), (1536, 1024, 512, 2, 8), (2560, 2048, 512, 4, 16), (3072, 2048, 1024, 4, 16)]:
        padded = triton.next_power_of_2(group_size)
        for gate_after_norm in (False, True):
            for rows, want in [(many, (head, tail, warps)), (many * 8, (head, tail, warps)),
                               (between, (padded, 0, padded_warps)), (triton_forward.FEW_ROWS + 1,
                                                                      (padded, 0, padded_warps))]:
                cfg = triton_forward.forward_config(group_size, rows, gate_after_norm=gate_after_norm)
                assert (cfg.block_m, cfg.block_n, cfg.block_tail, cfg.num_warps) == (1, *want)
    for group_size, head, tail, warps in [(5120, 4096, 1024, 8), (12288, 8192, 4096, 16)]:
        for rows in (triton_forward.FEW_ROWS + 1, many):
            cfg = triton_forward.forward_config(group_size, rows)
            assert (cfg.block_m, cfg.block_n, cfg.block_tail, cfg.num_warps) == (1, head, tail, warps)
    for group_size, warps in [(2048, 8), (4096, 16)]:
        cfg = triton_forward.forward_config(group_size, many)
        assert (cfg.block_m, cfg.block_n, cfg.block_tail, cfg.num_warps) == (1, group_size, 0, warps)


def test_split_min_rows_switch(monkeypatch):
    monkeypatch.setattr(triton_forward, "SPLIT_MIN_ROWS", triton_forward.FEW_ROWS + 1)
    cfg = triton_forward.forward_config(1536, triton_forward.FEW_ROWS + 1)
    assert (cfg.block_n, cfg.block_tail, cfg.num_warps) == (1024, 512, 2)


def test_few_rows_get_small_tiles_and_many_warps():
    """Decode-sized problems (at most FEW_ROWS rows) are latency-bound: ~512-element tiles, >= 4 warps."""
    few = triton_forward.FEW_ROWS
    for rows in (1, 32, few):
        cfg = triton_forward.forward_config(5120, rows)
        assert (cfg.block_m, cfg.block_n, cfg.block_tail, cfg.num_warps) == (1, 8192, 0, 32)
        assert triton_forward.forward_config(128, rows).block_m == min(4, rows)
        assert triton_forward.forward_config(1024, rows, gated=False).num_warps == 4
    assert triton_forward.forward_config(5120, few + 1).num_warps == 8
    assert triton_forward.forward_config(128, few + 1).block_m == 16


def test_inline_ptx_only_when_compiled_for_nvidia():
    assert triton_forward.inline_ptx_supported(None, None)
    assert triton_forward.inline_ptx_supported("0", None)
    assert not triton_forward.inline_ptx_supported("1", None)  # Triton's interpreter
    assert not triton_forward.inline_ptx_supported(None, "6.2.41133")  # a ROCm build of torch
    assert triton_forward.INLINE_PTX == (TRITON_DEVICE == "cuda" and torch.version.hip is None)


def test_ungated_small_groups_take_fewer_warps():
    """Groups up to 1024 columns: 16 elements a thread with a gate (8 up to 128 columns), 32 without (tiles of
    about 2048)."""
    for group_size, gated, warps in [(1024, True, 4), (1024, False, 2), (512, False, 2), (640, False, 2),
                                     (256, True, 4), (200, True, 4), (128, True, 8), (100, True, 8), (32, True, 8),
                                     (128, False, 2)]:
        for rows in (triton_forward.FEW_ROWS * 2, 1 << 14):
            for gate_after_norm in (False, True):
                for rms in (False, True):
                    cfg = triton_forward.forward_config(group_size, rows, gated, gate_after_norm, rms)
                    assert cfg.block_m * cfg.block_n == 2048 and cfg.num_warps == warps, (group_size, gated, cfg)


# Gated one-row tiles past 4096 columns: (group sizes, gate after the norm, RMSNorm, element sizes) -> warps below
# WIDE_TILE_MIN_ROWS rows and from it (elements a thread = padded width / 32 / warps). Groups of 6145-8192 pad to
# 8192: float32 at 8 elements a thread; 2-byte dtypes (and float64) RMSNorm 16, LayerNorm 32. Heads of 4096 and a
# tail (5120, 6144): RMSNorm 16 from WIDE_TILE_MIN_ROWS, else 32. Padded to 16384 and 32768: 16 (32 warps at
# most), but LayerNorm's head + tail (12288) 32.
WIDE_TILE_WARPS = [
    ((8192, 7000, 6145), (False, True), (True,), (2, 8), (16, 16)),
    ((8192, 7000, 6145), (False, True), (False,), (2, 8), (8, 8)),
    ((8192, 7000, 6145), (False, True), (False, True), (4,), (32, 32)),
    ((5120, 6144), (False, True), (True,), (2, 4, 8), (8, 16)),
    ((5120, 6144), (False, True), (False,), (2, 4, 8), (8, 8)),
    ((16384, 32768), (False, True), (False, True), (2, 4, 8), (32, 32)),
    ((12288,), (False, True), (True,), (2, 4, 8), (32, 32)),
    ((12288,), (False, True), (False,), (2, 4, 8), (16, 16)),
]


def test_gated_wide_tiles_take_fewer_elements_a_thread():
    many, fewer = triton_forward.WIDE_TILE_MIN_ROWS, triton_forward.WIDE_TILE_MIN_ROWS - 1
    assert triton_forward.FEW_ROWS < fewer and many <= 2048
    checked = set()
    for sizes, gate_after, rms_norm, element_sizes, (warps_fewer, warps_many) in WIDE_TILE_WARPS:
        for group_size, after, rms, element_size in itertools.product(sizes, gate_after, rms_norm, element_sizes):
            checked.add((group_size, after, rms, element_size))
            head, tail = triton_forward.head_and_tail(group_size)
            for rows, warps in [(triton_forward.FEW_ROWS + 1, warps_fewer), (fewer, warps_fewer),
                                (many, warps_many), (many * 8, warps_many)]:
                cfg = triton_forward.forward_config(group_size, rows, True, after, rms, 1, element_size)
                assert (cfg.block_m, cfg.block_n, cfg.block_tail, cfg.num_warps) == (1, head, tail, warps), \
                    (group_size, rows, after, rms, element_size, cfg)
                ungated = triton_forward.forward_config(group_size, rows, False, False, rms, 1, element_size)
                padded = triton.next_power_of_2(group_size)
                assert ungated.wide or ungated.num_warps == min(32, ungated.block_m * padded // 1024), ungated
    assert len(checked) == 8 * 2 * 2 * 3  # every group size, gate, norm and element size once


def test_wide_tile_min_rows_switch(monkeypatch):
    monkeypatch.setattr(triton_forward, "WIDE_TILE_MIN_ROWS", triton_forward.FEW_ROWS + 1)
    rows = triton_forward.FEW_ROWS + 1
    assert triton_forward.forward_config(5120, rows, True, False, True).num_warps == 16
    assert not triton_forward.forward_config(8192, rows, True, True, True).weight_first


def test_launcher_passes_the_element_size(monkeypatch):
    """The rule sees x's element size: a float32 group of 8192 gets the float32 tile."""
    seen = []
    rule = triton_forward.forward_config

    def spy(*args):
        seen.append(args)
        return rule(*args)

    monkeypatch.setattr(triton_forward, "forward_config", spy)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(3, 8192, device=TRITON_DEVICE, dtype=dtype)
        triton_forward.norm_gated_fwd_triton(x, None, None, x, 1e-5, None, False, True, "silu")
    assert [args[-1] for args in seen] == [2, 4]


def test_wide_groups_rule():
    """Past the one-pass limit: the split kernel (parts of 8192 columns at 8 warps, as many programs as fit) for
    up to FEW_WIDE_PROGRAMS rows x groups whatever the flags, and for more with a gate before the norm or ungated
    RMSNorm;
    the looped kernel with a gate after the norm (8 elements a thread, L2 hints on loads and pass 2's stores, the
    next chunk prefetched one address a thread) and on ungated LayerNorm (16 elements a thread, pass 2's stores
    hinted)."""
    split = triton_forward.ForwardConfig(1, 8192, 8, True, split=True)
    few = triton_forward.FEW_WIDE_PROGRAMS
    wide = triton_forward.WIDE_BLOCK
    gate_after = triton_forward.ForwardConfig(1, wide, 32, True, reverse_pass2=True, l2_hints=True,
                                              store_hint=True, prefetch_step=wide // (32 * 32))
    ungated_layer = triton_forward.ForwardConfig(1, wide, 16, True, reverse_pass2=True, store_hint=True)
    for group_size in (32769, 40000, 65536, 131072, 1 << 20):
        for gated, after, rms, many_rows in [(True, False, True, split), (True, False, False, split),
                                             (True, True, True, gate_after), (True, True, False, gate_after),
                                             (False, False, True, split), (False, True, True, split),
                                             (False, False, False, ungated_layer)]:
            for rows in (1, few // 4, few // 4 + 1, few, few + 1, 1 << 10, 1 << 20):
                for ngroups in (1, 4):
                    cfg = triton_forward.forward_config(group_size, rows, gated, after, rms, ngroups)
                    assert cfg == (split if rows * ngroups <= few else many_rows), \
                        (group_size, gated, after, rms, rows, ngroups, cfg)
    assert not triton_forward.forward_config(32768, 1).wide


def test_ungated_rmsnorm_streamed_from_dram_takes_two_chunks():
    """Ungated RMSNorm in groups of 8192 columns, TWO_PASS_MIN_ELEMENTS elements or more: the looped kernel in two
    chunks at 8 elements a thread, L2 hints, one reduction a row, and for float32 pass 2's stores hinted too.
    Smaller problems, other group sizes, gated or LayerNorm groups keep one-pass tiles."""
    elements = triton_forward.TWO_PASS_MIN_ELEMENTS
    two_chunks = triton_forward.ForwardConfig(1, 4096, 16, True, l2_hints=True, reduce_once=True)
    for ngroups in (1, 4):
        rows = elements // (8192 * ngroups)
        assert triton_forward.forward_config(8192, rows, False, False, True, ngroups) == two_chunks
        for element_size, hinted in ((2, False), (4, True), (8, False)):
            cfg = triton_forward.forward_config(8192, rows, False, False, True, ngroups, element_size)
            assert cfg == replace(two_chunks, store_hint=hinted), element_size
        for gated, rms, other_rows in [(False, True, rows - 1), (True, True, rows), (False, False, rows)]:
            assert not triton_forward.forward_config(8192, other_rows, gated, False, rms, ngroups).wide
    for group_size in (2048, 4096, 5120, 6144, 16384):
        assert not triton_forward.forward_config(group_size, elements // group_size, False, False, True).wide


def test_split_several_rows_switch(monkeypatch):
    monkeypatch.setattr(triton_forward, "SPLIT_SEVERAL_ROWS", True)
    cfg = triton_forward.forward_config(80, triton_forward.FEW_ROWS + 1)
    assert cfg.block_m > 1 and (cfg.block_n, cfg.block_tail) == (64, 16)


def test_weight_first_rule():
    """One-pass tiles below 32 warps load weight and bias with x and z when their head has at most 4096 columns;
    wider ones without a tail below WIDE_TILE_MIN_ROWS rows when gated or RMSNorm, and from it RMSNorm tiles of
    8192 columns without a gate after the norm; 32-warp tiles and the wide kernels load them after the
    statistics."""
    many = triton_forward.WIDE_TILE_MIN_ROWS
    seen = set()
    for group_size in (1, 100, 128, 1024, 1536, 4096, 5120, 7000, 8192, 12288, 16384, 32768, 65536):
        for rows in (1, 64, 65, 512, many - 1, many, 1 << 16):
            for gated, after, rms in ((True, False, True), (True, True, True), (True, False, False),
                                      (False, False, False), (False, False, True)):
                for element_size in (2, 4):
                    cfg = triton_forward.forward_config(group_size, rows, gated, after, rms, 1, element_size)
                    wider = not cfg.block_tail and (
                        (gated or rms) if rows < many else rms and not (gated and after) and cfg.block_n <= 8192)
                    first = not cfg.wide and cfg.num_warps < 32 and (cfg.block_n <= 4096 or wider)
                    assert cfg.weight_first == first, (group_size, rows, gated, after, rms, element_size, cfg)
                    seen.add(cfg.weight_first)
    assert seen == {False, True}
    # (group size, rows, gated, gate after, RMSNorm) -> weight first
    for args, first in [((128, 1 << 16, True, True, True), True), ((1024, 1, True, False, True), True),
                        ((5120, 1 << 14, True, False, True), True), ((4096, 1 << 14, False, False, False), True),
                        ((8192, 512, True, False, True), True), ((8192, 512, True, False, False), True),
                        ((8192, many, True, True, True), False), ((8192, many, True, False, False), False),
                        ((8192, 512, False, False, True), True), ((16384, many - 1, False, False, True), True),
                        ((16384, many, False, False, True), False), ((8192, many, False, False, True), True),
                        ((8192, many, True, False, True), True), ((8192, 1 << 16, True, False, True), True),
                        ((8192, 512, False, False, False), False), ((12288, 512, False, False, True), False),
                        ((12288, 512, True, False, False), False),
                        ((8192, 64, True, False, True), False), ((32768, 2048, True, True, True), False)]:
        assert triton_forward.forward_config(*args).weight_first == first, args


@pytest.mark.parametrize("weight_first", [False, True], ids=["weight-after", "weight-first"])
@pytest.mark.parametrize("shape,group_size,block_m,head,tail,warps", [
    ((5, 96), 48, 4, 64, 0, 2), ((3, 320), 160, 1, 128, 32, 1), ((4, 192), None, 1, 128, 64, 2)], ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[3]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[3]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_weight_first_either_way(weight_first, shape, group_size, block_m, head, tail, warps, gate,
                                        is_rms_norm, dtype):
    has_z, nbg, act = gate
    cfg = triton_forward.ForwardConfig(block_m, head, warps, False, tail, weight_first=weight_first)
    x, w, b, z = make_problem(shape, dtype, TRITON_DEVICE, has_z=has_z, offset=3.0)
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act, config=cfg)
    assert_matches_reference(result, x, w, b, z, 1e-6, group_size, nbg, is_rms_norm, act)


@pytest.mark.parametrize("shape,group_size,block_m,tail,warps", [
    ((5, 80), None, 4, 16, 1), ((3, 140), 70, 2, 8, 1),
    # the problem and tiles Triton 3.6 miscompiled with ngroups == 1 specialized (soak, session 3)
    ((2, 280), None, 2, 32, 2), ((5, 273), None, 2, 32, 2)], ids=str)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_head_tail_of_several_rows(shape, group_size, block_m, tail, warps, is_rms_norm, dtype):
    """Head + tail tiles of several rows, which the rule no longer chooses, stay right."""
    gs = group_size or shape[-1]
    head = triton.next_power_of_2(gs) // 2
    cfg = triton_forward.ForwardConfig(block_m, head, warps, False, tail)
    x, w, b, z = make_problem(shape, dtype, TRITON_DEVICE, has_z=False, offset=3.0)
    poison_cuda_allocator()
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, group_size, True, is_rms_norm, "silu", config=cfg)
    assert_matches_reference(result, x, w, b, z, 1e-6, group_size, True, is_rms_norm, "silu")


@pytest.mark.parametrize("tile,generic", [
    ((2, 256, 2, 32), True),  # head + tail, several rows: the tiles Triton 3.6 miscompiled with ngroups == 1
    ((1, 256, 2, 32), False),  # head + tail in one row
    ((2, 512, 4, 0), False),  # padded, several rows
], ids=str)
def test_head_tail_tiles_of_several_rows_run_the_generic_build(monkeypatch, tile, generic):
    launched = record_launches(monkeypatch, triton_forward, ("_FWD", "_FWD_GENERIC"))
    block_m, block_n, warps, tail = tile
    cfg = triton_forward.ForwardConfig(block_m, block_n, warps, False, tail)
    x, w, b, _ = make_problem((3, 280), torch.float32, TRITON_DEVICE, has_z=False)
    result = triton_forward.norm_gated_fwd_triton(x, w, b, None, 1e-6, None, True, False, "silu", config=cfg)
    assert launched == ["_FWD_GENERIC" if generic else "_FWD"]
    assert_matches_reference(result, x, w, b, None, 1e-6, None, True, False, "silu")


def test_head_tail_tiles_of_several_rows_stay_on_the_1d_grid(monkeypatch):
    """Several groups in head + tail tiles of several rows: the 1-D grid (Triton 3.6 computed LayerNorm wrong
    on the 2-D grid there; scripts/triton_ngroups_repro.py)."""
    calls = record_grids(monkeypatch, triton_forward._FWD_GENERIC, "GRID_2D")
    x, w, b, z = make_problem((9, 546), torch.float32, TRITON_DEVICE, offset=3.0)  # 2 groups of 273
    cfg = triton_forward.ForwardConfig(4, 256, 4, False, 32)  # 3 row tiles of 256 + 32 columns
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 0.1, 273, True, False, "silu", config=cfg)
    assert calls == [(6, False)]
    assert_matches_reference(result, x, w, b, z, 0.1, 273, True, False, "silu")


@pytest.mark.parametrize("grid", ["2-D", "1-D switch", "1-D too many row tiles"])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_several_groups_on_either_grid(monkeypatch, grid, is_rms_norm):
    """Tiles of several groups run on a (group, row tile) grid when the row tiles fit its second axis, else
    on a 1-D grid; both give the reference's result, bitwise the same."""
    calls = record_grids(monkeypatch, triton_forward._FWD, "GRID_2D")
    if grid == "1-D switch":
        monkeypatch.setattr(triton_forward, "GRID_2D_GROUPS", False)
    if grid == "1-D too many row tiles":
        monkeypatch.setattr(triton_forward, "MAX_GRID_Y", 2)
    x, w, b, z = make_problem((5, 192), torch.float32, TRITON_DEVICE)  # 4 groups of 48, 5 rows
    cfg = triton_forward.ForwardConfig(2, 64, 1, False)  # 3 row tiles
    result = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 48, False, is_rms_norm, "silu", config=cfg)
    assert calls == ([((4, 3), True)] if grid == "2-D" else [(12, False)])
    assert_matches_reference(result, x, w, b, z, 1e-6, 48, False, is_rms_norm, "silu")
    monkeypatch.undo()
    other = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, 48, False, is_rms_norm, "silu", config=cfg)
    assert all(torch.equal(a, b) for a, b in zip(result, other, strict=True))


@pytest.mark.parametrize("kind", ["transposed", "row-strided"])
def test_triton_strides(kind):
    if kind == "transposed":
        x = torch.randn(64, 24, device=TRITON_DEVICE).T
    else:
        x = torch.randn(24, 100, device=TRITON_DEVICE)[:, 10:74]
    z = torch.randn(24, 64, device=TRITON_DEVICE)[:, :].T.contiguous().T
    w = torch.randn(64, device=TRITON_DEVICE)
    result = triton_forward.norm_gated_fwd_triton(x, w, None, z, 1e-6, 16, False, True, "silu")
    assert_matches_reference(result, x, w, None, z, 1e-6, 16, False, True, "silu")


def test_triton_empty():
    x = torch.randn(0, 64, device=TRITON_DEVICE)
    out, mean, rstd = triton_forward.norm_gated_fwd_triton(x, None, None, None, 1e-6, 16, True, False, "silu")
    assert out.shape == (0, 64) and mean.shape == (4, 0) and rstd.shape == (4, 0)


@pytest.mark.parametrize("gate", GATES, ids=GATE_IDS)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_native_many_chunks(monkeypatch, gate, is_rms_norm):
    """The native path processes rows in chunks: make the chunks a few rows so that every chunk boundary
    and the statistics' (ngroups, M) slices are exercised on a small problem."""
    import custom_norm.native as native

    monkeypatch.setattr(native, "CPU_CHUNK_ELEMENTS", 3 * 48)  # 3 rows a chunk, 13 rows: a partial last chunk
    has_z, nbg, act = gate
    x, w, b, z = make_problem((13, 48), torch.float32, "cpu", has_z=has_z)
    result = _run_op(x, w, b, z, 16, nbg, is_rms_norm, act)
    assert_matches_reference(result, x, w, b, z, 1e-6, 16, nbg, is_rms_norm, act)
