"""Triton forward kernels of the gated norm and their launcher.

Three kernels, one idea each:
- ``_fwd_kernel``: a tile of BLOCK_M rows x one whole group held in registers, one pass over memory.
- ``_fwd_wide_kernel``: one row x one group too wide for registers (or several in turn, on a persistent
  grid), streamed in BLOCK_N chunks twice (statistics, then output); chunk statistics are merged with Chan's
  formula so that LayerNorm stays accurate on data with a large offset.
- ``_fwd_split_kernel``: a group too wide for registers split into parts of BLOCK_N columns, each held in
  registers by its own program; the programs of a group exchange their parts' statistics (Chan's formula
  again) through global memory, so that memory is read once.
Programs are numbered group fastest, so neighbouring programs touch neighbouring memory: on a 2-D grid (group,
row tile) when there are several groups and the row tiles fit its second axis (65535), else on a 1-D grid
(any size). Row offsets are 64-bit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._validation import Problem, validate, validate_out
from .launch import CachedKernel, next_power_of_2, sm_count

# Largest group (in elements, padded to a power of two) that one program holds in registers; wider groups
# take the looped kernel. On an H200 the one-pass kernel with 32 warps beat the looped one up to 32768.
MAX_FUSED_BLOCK = 32768
# Chunk width of the looped kernel (16 elements a thread; pass 2 reversed). H200, tune_forward.py, 1024 x
# 65536 gated: 131.8 us with 4096-column chunks in order, 124.9 with these.
WIDE_BLOCK = 8192
# Columns of each part of a group wider than MAX_FUSED_BLOCK, on the split kernel (see _forward_config).
SPLIT_BLOCK = 8192
# Whether tiles of several rows may split a group into a head and a tail (see _forward_config).
SPLIT_SEVERAL_ROWS = False
# Problems of at most this many rows run latency-bound tiles (see _forward_config).
FEW_ROWS = 64
# Groups past MAX_FUSED_BLOCK: at most this many (row, group) pairs, the looped kernel's programs, leave it too
# few programs to fill the GPU, and the split kernel runs whatever the flags (see _forward_config).
FEW_WIDE_PROGRAMS = 96
# Decode-sized problems (at most FEW_ROWS rows) pad groups up to this many columns instead of splitting them
# into a head and a tail (see _forward_config).
DECODE_PADDED_BLOCK = 8192
# Groups of 1025-4095 columns are split into a head and a tail in problems of at least this many rows (at most
# 2048: forward_config caps the rows it passes on), else padded (see _forward_config).
SPLIT_MIN_ROWS = 2048
# Gated RMSNorm one-row tiles of groups of 4097-6144 columns (a head of 4096 and a tail) take 16 elements a thread
# instead of 32 in problems of at least this many rows (at most 2048, as SPLIT_MIN_ROWS) (see _elements_a_thread);
# below it gated and ungated RMSNorm tiles of 4097-16384 columns without a tail load weight and bias first, and
# from it only RMSNorm tiles of 8192 without a gate after the norm (see _weight_first).
WIDE_TILE_MIN_ROWS = 2048
# Ungated RMSNorm problems of at least this many elements stream from DRAM (their bf16 input is over twice an
# H100's or H200's L2): groups of 8192 columns are read twice there (see _forward_config).
TWO_PASS_MIN_ELEMENTS = 1 << 26
# Tiles of several groups on a 2-D grid (group, row tile) when the row tiles fit its second axis, instead of
# dividing a 1-D program id by the runtime group count: 1.01-1.06x (H200, scripts/ab_grid.py; nemotron-h
# 16384 x 8192 in groups of 1024, 206 -> 195 us). Not for head + tail tiles of several rows (see the launcher).
GRID_2D_GROUPS = True
MAX_GRID_Y = 65535


# Triton compiles a separate variant of a kernel for an int argument equal to 1. With ngroups == 1 that
# variant of _fwd_kernel read outside its group for LayerNorm with head + tail tiles of several rows (H200,
# Triton 3.6: NaN or wrong statistics; ngroups == 2 right; scripts/triton_ngroups_repro.py). Such tiles run a
# build of the kernel that never specializes ngroups (see fused_forward_kernel); every other tile keeps
# Triton's specialization, which is worth up to 19 % on one-group shapes (scripts/ab_specialization.py).
UNSPECIALIZED = ["ngroups"]


def needs_generic_build(block_m: int, block_tail: int) -> bool:
    """Whether a fused tile must run the kernel build without the ``ngroups`` specialization: head + tail
    tiles of several rows, the pattern Triton 3.6 miscompiled when ``ngroups == 1``."""
    return block_m > 1 and block_tail > 0


def inline_ptx_supported(triton_interpret: str | None, hip_version: str | None) -> bool:
    """Whether the kernels may use inline PTX: compiled (not Triton's interpreter) for an NVIDIA GPU (not a
    ROCm build of torch, whose "cuda" device is an AMD GPU)."""
    return triton_interpret != "1" and hip_version is None


# Kernels compiled for NVIDIA GPUs compute the float32 sigmoid in four PTX instructions (``_sigmoid``); the
# interpreter and other targets evaluate the same formula in Triton.
INLINE_PTX = tl.constexpr(inline_ptx_supported(os.environ.get("TRITON_INTERPRET"), torch.version.hip))


@triton.jit
def _sigmoid(z):
    """1 / (1 + 2^(-z log2 e)) with flush-to-zero ex2 and rcp: no range fix-ups.

    tl.sigmoid's ex2 and division fix up subnormal and huge operands, nine more instructions an element,
    which the backward's loop is bound by. Flushed, a sigmoid below 2^-126 (z < -87) becomes 0 (and its
    SiLU -0.0 instead of about -1e-36); large z still gives 1, z = -inf 0, NaN stays NaN.
    """
    if INLINE_PTX and z.dtype == tl.float32:
        s = tl.inline_asm_elementwise(
            """{
            .reg .f32 t;
            mul.f32 t, $1, 0fBFB8AA3B;
            ex2.approx.ftz.f32 t, t;
            add.f32 t, t, 0f3F800000;
            rcp.approx.ftz.f32 $0, t;
            }""",
            "=r,r", [z], dtype=tl.float32, is_pure=True, pack=1)
    elif z.dtype == tl.float32:
        s = 1.0 / (1.0 + tl.exp2(z * -1.4426950408889634))
    else:
        s = tl.sigmoid(z)
    return s


@triton.jit
def _activate(z, SIGMOID_GATE: tl.constexpr):
    if SIGMOID_GATE:
        return _sigmoid(z)
    return z * _sigmoid(z)


@triton.jit
def _eps(eps_hi, eps_lo, COMPUTE_DTYPE: tl.constexpr):
    """eps in the compute dtype: float scalars reach kernels as float32, so float64 eps comes in two parts."""
    return tl.cast(eps_hi, COMPUTE_DTYPE) + tl.cast(eps_lo, COMPUTE_DTYPE)


@triton.jit
def _div(a, b, COMPUTE_DTYPE: tl.constexpr):
    """Correctly rounded a / b: Triton's float32 ``/`` is approximate, and x - mean must be exactly 0 when a
    group holds one value (group_size 1 or N = 1), since rstd ~ 1/sqrt(eps) magnifies any residue."""
    # if/else, not an early return: Triton still compiles statements after a static return, and div_rn
    # rejects float64
    if COMPUTE_DTYPE == tl.float64:
        quotient = a / b
    else:
        quotient = tl.math.div_rn(a, b)
    return quotient


@triton.jit
def _times_gate(x, gate):
    """The norm's input when the gate comes first, computed the same way by every kernel: "+ 0.0" makes the
    product round before x - mean (contracted into one FMA with that subtraction, its rounding error would
    survive where x - mean should be exactly 0, in one-value groups, and the backward's xhat would differ
    from the forward's)."""
    return x * gate + 0.0


@triton.jit
def prefetch_l2(PTRS):
    """Ask L2 for the lines at these addresses (a hint: no registers are filled and nothing waits for it).
    A no-op where inline PTX is not available."""
    if INLINE_PTX:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [PTRS],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _load_input(X, Z, x_offsets, z_offsets, mask, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
                SIGMOID_GATE: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, EVICTION: tl.constexpr):
    """Load x (times the gate when gating before the norm) and z; z as stored when the gate comes after the
    norm (``_affine_and_gate`` activates it), so that a tile holds it in half the registers."""
    x = tl.load(X + x_offsets, mask=mask, other=0.0, eviction_policy=EVICTION).to(COMPUTE_DTYPE)
    z = x  # placeholder when there is no gate; never used then
    if HAS_Z:
        z = tl.load(Z + z_offsets, mask=mask, other=0.0, eviction_policy=EVICTION)
        if not NORM_BEFORE_GATE:
            x = _times_gate(x, _activate(z.to(COMPUTE_DTYPE), SIGMOID_GATE))
    return x, z


@triton.jit
def _load_weight_and_bias(W, B, col_idx, col_mask, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Weight and bias at these columns in their own dtype (a tile holds bf16 ones in half the registers);
    placeholders, never used, where there are none."""
    w = col_mask
    b = col_mask
    if HAS_WEIGHT:
        w = tl.load(W + col_idx, mask=col_mask, other=0.0)
    if HAS_BIAS:
        b = tl.load(B + col_idx, mask=col_mask, other=0.0)
    return w, b


@triton.jit
def _affine_and_gate(xhat, z, w, b, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     GATE_AFTER: tl.constexpr, SIGMOID_GATE: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    y = xhat
    if HAS_WEIGHT:
        y = y * w.to(COMPUTE_DTYPE)
    if HAS_BIAS:
        y = y + b.to(COMPUTE_DTYPE)
    if GATE_AFTER:
        y = y * _activate(z.to(COMPUTE_DTYPE), SIGMOID_GATE)
    return y


@triton.jit
def _tile_columns(rows, row_mask, group, group_size, START: tl.constexpr, BLOCK: tl.constexpr):
    """Column indices and masks of the BLOCK columns of a group starting at START."""
    cols = START + tl.arange(0, BLOCK)
    col_mask = cols < group_size
    return group * group_size + cols, col_mask, row_mask[:, None] & col_mask[None, :]


@triton.jit
def _fwd_kernel(
    X, Z, W, B, OUT, MEAN, RSTD,
    stride_x_row, stride_z_row,
    M, group_size, ngroups, eps_hi, eps_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_TAIL: tl.constexpr,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
    IS_RMS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr, GRID_2D: tl.constexpr, WEIGHT_FIRST: tl.constexpr,
):
    # A group is held as a BLOCK_N tile plus, when BLOCK_TAIL > 0, a BLOCK_TAIL tile after it: a group of
    # 5120 columns is 4096 + 1024 lanes instead of 8192 padded ones (the arithmetic per lane is what bounds
    # bf16 groups of that size).
    # GRID_2D: group on axis 0, row tile on axis 1 (no division by a runtime ngroups; see the launcher)
    if GRID_2D:
        group = tl.program_id(0)
        row_tile = tl.program_id(1)
    else:
        group = tl.program_id(0) % ngroups
        row_tile = tl.program_id(0) // ngroups
    rows = row_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows = rows.to(tl.int64)
    N = ngroups * group_size
    GATE_AFTER: tl.constexpr = HAS_Z and NORM_BEFORE_GATE

    col_idx, col_mask, mask = _tile_columns(rows, row_mask, group, group_size, 0, BLOCK_N)
    x, z = _load_input(X, Z, rows[:, None] * stride_x_row + col_idx[None, :],
                       rows[:, None] * stride_z_row + col_idx[None, :], mask,
                       HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, COMPUTE_DTYPE, "")
    # WEIGHT_FIRST: weight and bias loaded with x and z, before the reductions, so that the program waits for
    # memory once (see ForwardConfig.weight_first)
    if WEIGHT_FIRST:
        w, b = _load_weight_and_bias(W, B, col_idx[None, :], col_mask[None, :], HAS_WEIGHT, HAS_BIAS)
    total = tl.sum(x, axis=1)
    if BLOCK_TAIL > 0:
        tail_idx, tail_col_mask, tail_mask = _tile_columns(rows, row_mask, group, group_size, BLOCK_N, BLOCK_TAIL)
        x_tail, z_tail = _load_input(X, Z, rows[:, None] * stride_x_row + tail_idx[None, :],
                                     rows[:, None] * stride_z_row + tail_idx[None, :], tail_mask,
                                     HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, COMPUTE_DTYPE, "")
        if WEIGHT_FIRST:
            w_tail, b_tail = _load_weight_and_bias(W, B, tail_idx[None, :], tail_col_mask[None, :], HAS_WEIGHT,
                                                   HAS_BIAS)
        total += tl.sum(x_tail, axis=1)

    stat_offsets = group.to(tl.int64) * M + rows
    count = tl.cast(group_size, COMPUTE_DTYPE)
    if IS_RMS_NORM:
        centered = x
        if BLOCK_TAIL > 0:
            centered_tail = x_tail
    else:
        mean = _div(total, count, COMPUTE_DTYPE)
        tl.store(MEAN + stat_offsets, mean, mask=row_mask)
        centered = tl.where(mask, x - mean[:, None], 0.0)
        if BLOCK_TAIL > 0:
            centered_tail = tl.where(tail_mask, x_tail - mean[:, None], 0.0)
    squares = tl.sum(centered * centered, axis=1)
    if BLOCK_TAIL > 0:
        squares += tl.sum(centered_tail * centered_tail, axis=1)
    if WEIGHT_FIRST:
        # "/" (2 ulp at most in float32): the variance needs no exact quotient (_div is for x - mean), and with
        # div_rn's slow-path call ptxas split the early loads into waves again (ptxas_report.py; BENCHMARKS.md)
        variance = squares / count
    else:
        variance = _div(squares, count, COMPUTE_DTYPE)
    rstd = 1.0 / tl.sqrt(variance + _eps(eps_hi, eps_lo, COMPUTE_DTYPE))
    tl.store(RSTD + stat_offsets, rstd, mask=row_mask)
    if not WEIGHT_FIRST:
        w, b = _load_weight_and_bias(W, B, col_idx[None, :], col_mask[None, :], HAS_WEIGHT, HAS_BIAS)

    y = _affine_and_gate(centered * rstd[:, None], z, w, b, HAS_WEIGHT, HAS_BIAS, GATE_AFTER, SIGMOID_GATE,
                         COMPUTE_DTYPE)
    tl.store(OUT + rows[:, None] * N + col_idx[None, :], y, mask=mask)
    if BLOCK_TAIL > 0:
        if not WEIGHT_FIRST:
            w_tail, b_tail = _load_weight_and_bias(W, B, tail_idx[None, :], tail_col_mask[None, :], HAS_WEIGHT,
                                                   HAS_BIAS)
        y_tail = _affine_and_gate(centered_tail * rstd[:, None], z_tail, w_tail, b_tail, HAS_WEIGHT, HAS_BIAS,
                                  GATE_AFTER, SIGMOID_GATE, COMPUTE_DTYPE)
        tl.store(OUT + rows[:, None] * N + tail_idx[None, :], y_tail, mask=tail_mask)


@triton.jit
def _prefetch_chunk(X, Z, x_row_offset, z_row_offset, group_start, group_size, first, offsets,
                    WITH_Z: tl.constexpr):
    """Prefetch x (and z) of one row at columns ``first + offsets`` of the group (lanes past its end repeat its
    last column); nothing when ``first`` is outside the group (the chunk before the first or after the last)."""
    if (first >= 0) & (first < group_size):
        cols = group_start + tl.minimum(first + offsets, group_size - 1)
        prefetch_l2(X + x_row_offset + cols)
        if WITH_Z:
            prefetch_l2(Z + z_row_offset + cols)


@triton.jit
def _fwd_wide_row(
    X, Z, W, B, OUT, MEAN, RSTD,
    stride_x_row, stride_z_row,
    M, group_size, ngroups, eps_hi, eps_lo, group, row,
    BLOCK_N: tl.constexpr, REVERSE_PASS2: tl.constexpr, L2_HINTS: tl.constexpr, REDUCE_ONCE: tl.constexpr,
    PREFETCH_STEP: tl.constexpr, STORE_HINT: tl.constexpr, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
    SIGMOID_GATE: tl.constexpr, IS_RMS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    """One row of one group, read twice: pass 1 for the statistics, pass 2 to normalize."""
    group_start = group * group_size
    N = ngroups * group_size
    # PREFETCH_STEP > 0: each pass asks L2 for the chunk after the one it loads (the tensors that pass reads, an
    # address every PREFETCH_STEP elements), so that more bytes are in flight than one chunk's loads.
    PREFETCH_ADDRESSES: tl.constexpr = BLOCK_N // PREFETCH_STEP if PREFETCH_STEP > 0 else 1
    prefetch_offsets = tl.arange(0, PREFETCH_ADDRESSES) * PREFETCH_STEP

    # Pass 1: statistics. For LayerNorm, (count, mean, m2) of each chunk are merged into the running ones.
    # RMSNorm with REDUCE_ONCE sums x * x lane by lane over the chunks and across the program once at the end
    # (one cross-warp reduction, and its barriers, a row instead of one a chunk).
    mean = tl.zeros((), COMPUTE_DTYPE)
    m2 = tl.zeros((), COMPUTE_DTYPE)
    lane_squares = tl.zeros((BLOCK_N,), COMPUTE_DTYPE)
    for start in range(0, group_size, BLOCK_N):
        if PREFETCH_STEP > 0:
            _prefetch_chunk(X, Z, row * stride_x_row, row * stride_z_row, group_start, group_size,
                            start + BLOCK_N, prefetch_offsets, HAS_Z and not NORM_BEFORE_GATE)
        col_idx = group_start + start + tl.arange(0, BLOCK_N)
        col_mask = start + tl.arange(0, BLOCK_N) < group_size
        x, z = _load_input(X, Z, row * stride_x_row + col_idx, row * stride_z_row + col_idx, col_mask,
                           HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, COMPUTE_DTYPE,
                           "evict_last" if L2_HINTS else "")
        if IS_RMS_NORM:
            if REDUCE_ONCE:
                lane_squares += x * x  # masked lanes loaded 0
            else:
                m2 += tl.sum(x * x, axis=0)
        else:
            count = tl.minimum(group_size - start, BLOCK_N).to(COMPUTE_DTYPE)
            chunk_mean = _div(tl.sum(x, axis=0), count, COMPUTE_DTYPE)
            centered = tl.where(col_mask, x - chunk_mean, 0.0)
            delta = chunk_mean - mean
            total = start + count
            mean += delta * (count / total)
            m2 += tl.sum(centered * centered, axis=0) + delta * delta * (start * count / total)
    if IS_RMS_NORM and REDUCE_ONCE:
        m2 = tl.sum(lane_squares, axis=0)
    var = _div(m2, tl.cast(group_size, COMPUTE_DTYPE), COMPUTE_DTYPE)
    rstd = 1.0 / tl.sqrt(var + _eps(eps_hi, eps_lo, COMPUTE_DTYPE))
    stat_offset = group.to(tl.int64) * M + row
    tl.store(RSTD + stat_offset, rstd)
    if not IS_RMS_NORM:
        tl.store(MEAN + stat_offset, mean)

    # Pass 2: normalize, affine, gate, write.
    last = (group_size - 1) // BLOCK_N * BLOCK_N
    for step in range(0, group_size, BLOCK_N):
        start = last - step if REVERSE_PASS2 else step
        if PREFETCH_STEP > 0:
            following = start - BLOCK_N if REVERSE_PASS2 else start + BLOCK_N
            _prefetch_chunk(X, Z, row * stride_x_row, row * stride_z_row, group_start, group_size,
                            following, prefetch_offsets, HAS_Z)
        col_idx = group_start + start + tl.arange(0, BLOCK_N)
        col_mask = start + tl.arange(0, BLOCK_N) < group_size
        x, z = _load_input(X, Z, row * stride_x_row + col_idx, row * stride_z_row + col_idx, col_mask,
                           HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, COMPUTE_DTYPE,
                           "evict_first" if L2_HINTS else "")
        if not IS_RMS_NORM:
            x = x - mean
        w, b = _load_weight_and_bias(W, B, col_idx, col_mask, HAS_WEIGHT, HAS_BIAS)
        y = _affine_and_gate(x * rstd, z, w, b, HAS_WEIGHT, HAS_BIAS, HAS_Z and NORM_BEFORE_GATE, SIGMOID_GATE,
                             COMPUTE_DTYPE)
        # STORE_HINT: the output's lines are the first L2 evicts, not x's that pass 2 has yet to read again
        tl.store(OUT + row * N + col_idx, y, mask=col_mask, eviction_policy="evict_first" if STORE_HINT else "")


@triton.jit
def _fwd_wide_kernel(
    X, Z, W, B, OUT, MEAN, RSTD,
    stride_x_row, stride_z_row,
    M, group_size, ngroups, eps_hi, eps_lo,
    BLOCK_N: tl.constexpr, REVERSE_PASS2: tl.constexpr, L2_HINTS: tl.constexpr, REDUCE_ONCE: tl.constexpr,
    PREFETCH_STEP: tl.constexpr, STORE_HINT: tl.constexpr, PERSISTENT: tl.constexpr, HAS_Z: tl.constexpr,
    NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr, IS_RMS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    # A group too wide for registers is read twice; the second read comes from L2 only if the chunk is still
    # there. Four ways to help that, for the tuner: REVERSE_PASS2 walks pass 2 from the last chunk (the most
    # recently read) back; L2_HINTS asks pass 1 to keep its lines (evict_last) and pass 2 to drop them
    # (evict_first), STORE_HINT its output's lines too; PERSISTENT runs a grid of fewer programs than (row, group)
    # pairs, each taking every num_programs-th pair, so that fewer rows are in flight at once. REDUCE_ONCE: see
    # _fwd_wide_row.
    if PERSISTENT:
        for item in range(tl.program_id(0), M * ngroups, tl.num_programs(0)):
            _fwd_wide_row(X, Z, W, B, OUT, MEAN, RSTD, stride_x_row, stride_z_row, M, group_size, ngroups, eps_hi,
                          eps_lo, item % ngroups, (item // ngroups).to(tl.int64), BLOCK_N, REVERSE_PASS2, L2_HINTS,
                          REDUCE_ONCE, PREFETCH_STEP, STORE_HINT, HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, IS_RMS_NORM,
                          HAS_WEIGHT, HAS_BIAS, COMPUTE_DTYPE)
    else:
        pid = tl.program_id(0)
        _fwd_wide_row(X, Z, W, B, OUT, MEAN, RSTD, stride_x_row, stride_z_row, M, group_size, ngroups, eps_hi,
                      eps_lo, pid % ngroups, (pid // ngroups).to(tl.int64), BLOCK_N, REVERSE_PASS2, L2_HINTS,
                      REDUCE_ONCE, PREFETCH_STEP, STORE_HINT, HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, IS_RMS_NORM,
                      HAS_WEIGHT, HAS_BIAS, COMPUTE_DTYPE)


@triton.jit
def _fwd_split_kernel(
    X, Z, W, B, OUT, MEAN, RSTD, PARTIALS, ARRIVED,
    stride_x_row, stride_z_row,
    M, group_size, ngroups, parts, eps_hi, eps_lo,
    BLOCK_N: tl.constexpr, PARTS_BLOCK: tl.constexpr, STAGE: tl.constexpr,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
    IS_RMS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    # A wide group split into ``parts`` parts of BLOCK_N columns, each held in registers by its own program, so
    # that x and z are read once (the looped kernel reads them twice). The programs of a group exchange their
    # parts' statistics through PARTIALS: (mean, m2) of each part, merged by every one of them in the same
    # order, so that all normalize with the same bits.
    # STAGE 0: one launch; each program announces its part on the group's ARRIVED counter (zeroed before the
    # launch) and waits there for the others, which the launcher makes safe by a co-resident (cooperative)
    # grid whose size is a multiple of ``parts``: the programs of a group hold the same iteration of the loop.
    # STAGE 1 then 2: two launches, statistics then output, each reading x; no program waits for another
    # (Triton's interpreter runs programs one after another, so a waiting one would never return).
    GATE_AFTER: tl.constexpr = HAS_Z and NORM_BEFORE_GATE
    N = ngroups * group_size
    for item in range(tl.program_id(0), M * ngroups * parts, tl.num_programs(0)):
        segment = item // parts
        part = item % parts
        group = segment % ngroups
        row = (segment // ngroups).to(tl.int64)
        start = part * BLOCK_N
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < group_size
        col_idx = group * group_size + cols
        x, z = _load_input(X, Z, row * stride_x_row + col_idx, row * stride_z_row + col_idx, col_mask,
                           HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, COMPUTE_DTYPE, "")
        if STAGE != 2:
            count = tl.minimum(group_size - start, BLOCK_N).to(COMPUTE_DTYPE)
            if IS_RMS_NORM:
                part_m2 = tl.sum(x * x, axis=0)
            else:
                part_mean = _div(tl.sum(x, axis=0), count, COMPUTE_DTYPE)
                centered = tl.where(col_mask, x - part_mean, 0.0)
                part_m2 = tl.sum(centered * centered, axis=0)
                tl.store(PARTIALS + 2 * item, part_mean)
            tl.store(PARTIALS + 2 * item + 1, part_m2)
            if STAGE == 0:
                tl.debug_barrier()  # every thread's stores above happen before the release below
                tl.atomic_add(ARRIVED + segment, 1, sem="release", scope="gpu")
                while tl.atomic_add(ARRIVED + segment, 0, sem="acquire", scope="gpu") < parts:
                    pass
        if STAGE != 1:
            # every part's statistics, merged in part order (the parallel form of Chan's formula)
            others = tl.arange(0, PARTS_BLOCK)
            present = others < parts
            slots = PARTIALS + 2 * (segment * parts + others)
            m2s = tl.load(slots + 1, mask=present, other=0.0, volatile=True)
            if IS_RMS_NORM:
                m2 = tl.sum(m2s, axis=0)
            else:
                counts = tl.where(present, tl.minimum(group_size - others * BLOCK_N, BLOCK_N), 0).to(COMPUTE_DTYPE)
                means = tl.load(slots, mask=present, other=0.0, volatile=True)
                mean = _div(tl.sum(counts * means, axis=0), tl.cast(group_size, COMPUTE_DTYPE), COMPUTE_DTYPE)
                spread = means - mean
                m2 = tl.sum(m2s + counts * spread * spread, axis=0)
                x = tl.where(col_mask, x - mean, 0.0)
            var = _div(m2, tl.cast(group_size, COMPUTE_DTYPE), COMPUTE_DTYPE)
            rstd = 1.0 / tl.sqrt(var + _eps(eps_hi, eps_lo, COMPUTE_DTYPE))
            if part == 0:
                stat_offset = group.to(tl.int64) * M + row
                tl.store(RSTD + stat_offset, rstd)
                if not IS_RMS_NORM:
                    tl.store(MEAN + stat_offset, mean)
            w, b = _load_weight_and_bias(W, B, col_idx, col_mask, HAS_WEIGHT, HAS_BIAS)
            y = _affine_and_gate(x * rstd, z, w, b, HAS_WEIGHT, HAS_BIAS, GATE_AFTER, SIGMOID_GATE, COMPUTE_DTYPE)
            tl.store(OUT + row * N + col_idx, y, mask=col_mask)


@dataclass(frozen=True)
class ForwardConfig:
    block_m: int
    block_n: int
    num_warps: int
    wide: bool
    block_tail: int = 0
    reverse_pass2: bool = False  # wide kernel only: see _fwd_wide_kernel
    l2_hints: bool = False  # wide kernel only
    programs_per_sm: int = 0  # wide kernel only: 0, a program per (row, group); else a persistent grid
    reduce_once: bool = False  # wide kernel, RMSNorm only: one cross-program reduction a row (_fwd_wide_row)
    prefetch_step: int = 0  # wide kernel: > 0, prefetch the next chunk into L2, an address every this many elements
    store_hint: bool = False  # wide kernel: pass 2 stores the output with evict_first
    max_registers: int | None = None  # a cap on registers a thread (Triton's maxnreg; spills past it); None: none
    # wide only: each group split into parts of block_n columns, one program a part, exchanging statistics
    # (_fwd_split_kernel); programs_per_sm then caps the co-resident grid (0: as many as fit)
    split: bool = False
    # one-pass tiles only: weight and bias loaded with x and z (and the variance divided by "/"), not after the
    # statistics, where ptxas gave the later loads registers that earlier ones had to free first, so a program
    # waited for memory two or more times (scripts/ptxas_report.py). Which tiles gain: see _weight_first.
    weight_first: bool = False


def forward_config(group_size: int, rows: int, gated: bool = True, gate_after_norm: bool = False,
                   is_rms_norm: bool = False, ngroups: int = 1, element_size: int = 2) -> ForwardConfig:
    """Tile shape and warps for a problem of ``rows`` rows of ``ngroups`` groups of ``element_size``-byte
    elements (x's; cached: it runs on every call); see ``_forward_config``. ``gate_after_norm``: a gate applied
    after the norm (``norm_before_gate``), when ``gated``."""
    # the module constants are part of the key so that tests (and config_sweep) can change them
    return _forward_config(group_size, min(rows, 2048), rows * ngroups <= FEW_WIDE_PROGRAMS,
                           rows * ngroups * group_size >= TWO_PASS_MIN_ELEMENTS, gated, gated and gate_after_norm,
                           is_rms_norm, element_size, MAX_FUSED_BLOCK, WIDE_BLOCK, SPLIT_BLOCK, SPLIT_SEVERAL_ROWS,
                           FEW_ROWS, DECODE_PADDED_BLOCK, SPLIT_MIN_ROWS, WIDE_TILE_MIN_ROWS)


@functools.lru_cache(maxsize=4096)
def _forward_config(group_size: int, rows: int, few_wide_programs: bool, streams_from_dram: bool, gated: bool,
                    gate_after_norm: bool, is_rms_norm: bool, element_size: int, max_fused_block: int,
                    wide_block: int, split_block: int, split_several_rows: bool, few_rows: int,
                    decode_padded_block: int, split_min_rows: int, wide_tile_min_rows: int) -> ForwardConfig:
    """Tile shape and warps for a problem.

    From sweeps on an H200 (scripts/tune_forward.py, 2^26 elements; BENCHMARKS.md): groups up to 1024
    columns want tiles of about 2048 elements (several rows per program) at 16 per thread, 32 without a gate
    (LayerNorm in groups of 512, 640 and 1024: 75-88 % -> 82-95 % of copy bandwidth); gated groups of
    2048-4096 one row at 8 elements per thread and ungated ones two rows at 32; 8192 and wider one row at
    32 per thread; timings away from 2^26 elements moved some gated tiles to fewer a thread
    (``_elements_a_thread``). A group that is not a power of two is split into a power-of-two head and a tail
    when that saves lanes (5120 = 4096 + 1024), in tiles of one row only (at decode sizes only past
    ``decode_padded_block`` columns; below 4096 columns only from ``split_min_rows`` rows): tiles of several
    rows with a head and a tail run the kernel build without the ngroups specialization (README, known
    limits), right in every config_sweep run but not yet timed on odd group sizes. At most ``few_rows`` rows
    (decode) get small tiles and many warps instead (below).
    """
    block_n = next_power_of_2(group_size)
    if block_n > max_fused_block:
        # Split into parts of split_block columns, a program a part (x and z read once), where the looped
        # kernel (read twice) lost on both cards (session 11, tune_forward.py --split; BENCHMARKS.md):
        # - decode-sized problems (at most FEW_WIDE_PROGRAMS rows x groups), whose few (row, group) programs
        #   leave the looped kernel most of the GPU idle: 1 and 32 rows of 65536, 13-16 -> 5-7 us; 4 groups of
        #   65536 a row (H200, session 12), 16 and 24 rows 13.7-15.3 -> 11.1-12.3 us, while at 32 rows (128
        #   programs on 132 SMs) the looped kernel won, 14.8-16.6 against 15.4-19.0;
        # - a gate before the norm, whose looped pass 1 reads z too: 1024 x 65536, H200 141 -> 115 us, H100
        #   189 -> 156; LayerNorm 1677 x 40000, H200 156 -> 147;
        # - ungated RMSNorm: 1024 x 65536, H200 94 -> 90, H100 130 -> 111.
        # Elsewhere the looped kernel stays: on the H200 the split kernel lost with the gate after the norm
        # (65536: 117 -> 124) and on ungated LayerNorm (101 -> 115). Parts of 8192 at 8 warps (32 elements a
        # thread): best or within 7 % of the best of 2048-32768 at 4-32 warps on H100.
        if few_wide_programs or (gated and not gate_after_norm) or (not gated and is_rms_norm):
            return ForwardConfig(block_m=1, block_n=split_block, num_warps=max(1, min(32, split_block // 1024)),
                                 wide=True, split=True)
        return looped_config(gated, gate_after_norm, wide_block)
    if rows <= few_rows:
        # Too few programs to fill the GPU (decode): each program's latency is the time, so tiles are small
        # (about 512 elements, one row from 512 columns) and the warps many (8 elements per thread, at
        # least 4 warps). H200, tune_forward.py --rows 1/32/64: 1 x 5120 3.4 -> 2.8 us, 32 x 128 2.0 -> 1.6,
        # 1 x 8192 in groups of 1024 2.7 -> 1.9, 1 x 8192 2.5 -> 2.2.
        # A group is padded to a power of two rather than split into a head and a tail, whose two reductions
        # run one after the other, up to DECODE_PADDED_BLOCK columns (8 elements a thread at 32 warps). H200,
        # session 13, tune_forward.py --rows 1 / 64, split -> padded: 1280 2.3 -> 1.8 us, 1536 2.2 -> 1.8,
        # 2560 2.2 -> 1.9, 3072 2.2-2.4 -> 2.0-2.2; 5120 and 6144 a tie or 0.2 faster; 12288 (padded to 16384)
        # 0.1 slower, so it keeps its head and tail.
        block_m = max(1, min(512 // block_n, next_power_of_2(max(rows, 1))))
        head, tail = _row_tile_columns(group_size, block_m, split_several_rows, decode_padded_block)
        num_warps = max(4, min(32, block_m * head // 256))
        return ForwardConfig(block_m=block_m, block_n=head, num_warps=num_warps, wide=False, block_tail=tail,
                             weight_first=_weight_first(head, tail, rows, num_warps, gated, gate_after_norm,
                                                     is_rms_norm, wide_tile_min_rows))
    if not gated and is_rms_norm and group_size == 8192 and streams_from_dram:
        # Ungated RMSNorm read twice in two chunks, as Inductor does (pass 1 keeps its lines in L2, pass 2 drops
        # them; the squares summed lane by lane and reduced once), 8 elements a thread. H200, session 12,
        # against the one-pass tile: bf16 2^27 elements 129.6-130.4 -> 127.6-127.8 us (bench.py A/B, 3 rounds:
        # 131.6 -> 127.5), 2^26 66.2-66.4 -> 65.9-66.0; float32 2^27 263.0-263.3 -> 256.8-257.4, 2^26 131.2-131.3
        # -> 129.9-130.0. Not elsewhere: 2^24 elements (L2-resident between calls) 18.8 -> 19.2; 4096 columns a
        # tie at 2^26 and float32 0.5-1.2 % slower (bf16 2^27 1.7 % faster); groups of 2560-6144 columns 8-28 %
        # slower (a part-filled second chunk); 16384 columns no gain. float32 stores its output evict_first
        # (session 17, three runs: 2^26 129.5-129.8 -> 128.5-128.7, 2^27 256.1-256.8 -> 253.0-253.5; bf16 0.4-0.7 %
        # slower, so not there).
        chunk = block_n // 2
        return ForwardConfig(block_m=1, block_n=chunk, num_warps=chunk // 256, wide=True, l2_hints=True,
                             reduce_once=True, store_hint=element_size == 4)
    if block_n <= 1024:
        block_m = max(1, min(2048 // block_n, next_power_of_2(max(rows, 1))))
    elif block_n <= 4096:
        block_m = 1 if gated else 2
    else:
        block_m = 1
    # A group of 1025-4095 columns that a head and a tail would hold in fewer lanes, in one-row tiles: with many
    # rows split, at 16 elements of the head a thread (the padded width's warps gave 4 of the head and 2 of the
    # tail); with fewer padded, as decode tiles are (the split's second reduction is latency there). H200,
    # session 13, tune_forward.py, gate before the norm, split at the padded width's warps (the rule
    # before) -> this rule: at 2^26 elements 1280 143.0 -> 95.1 us, 1536 126.3 -> 94.2, 2560 122.6 ->
    # 95.6, 3072 110.2 -> 95.9 (gate after 123.6 -> 93.9), each within 1 % of its sweep's best; at 2048
    # rows 6.3 / 6.4 / 10.3 / 10.9 -> 4.9 / 5.1 / 7.3 / 8.5 (padded: 5.7 / 5.7 / 10.2 / 10.3); padded at
    # 512 rows 3.0 / 3.0 / 3.8 / 3.8 -> 2.6 / 2.7 / 3.8 / 3.8 (the head's warps: 3.0 / 3.2 / 3.5 / 3.8)
    # and at 128 rows 2.5 / 2.6 / 2.7 / 2.6 -> 2.1 / 2.2 / 2.3 / 2.4.
    padded_up_to = 4096 if block_m == 1 and rows < split_min_rows else 0
    head, tail = _row_tile_columns(group_size, block_m, split_several_rows, padded_up_to)
    if tail and block_m == 1 and block_n <= 4096:
        num_warps = max(1, head // 512)
    else:
        per_thread = _elements_a_thread(block_n, tail, rows, gated, is_rms_norm, element_size, wide_tile_min_rows)
        num_warps = max(1, min(32, block_m * block_n // (32 * per_thread)))
    return ForwardConfig(block_m=block_m, block_n=head, num_warps=num_warps, wide=False, block_tail=tail,
                         weight_first=_weight_first(head, tail, rows, num_warps, gated, gate_after_norm,
                                                     is_rms_norm, wide_tile_min_rows))


def _weight_first(head: int, tail: int, rows: int, num_warps: int, gated: bool, gate_after_norm: bool,
                  is_rms_norm: bool, wide_tile_min_rows: int) -> bool:
    """Whether a one-pass tile loads weight and bias with x and z (``ForwardConfig.weight_first``), below 32
    warps: heads of at most 4096 columns; wider tiles without a tail below ``wide_tile_min_rows`` rows, where
    few waves of programs make each program's waits for memory the time, gated ones and ungated RMSNorm ones;
    from that many rows RMSNorm tiles of 8192 columns without a gate after the norm.
    H200, session 15, bench.py A/B against loading them after the statistics (µs): 16 x 128 tiles (Qwen3-Next)
    at 64 / 512 / 16384 tokens 1.82 / 3.50 / 94.2 -> 1.73 / 3.27 / 94.0, decode 1.32 -> 1.17; Nemotron-H decode
    (8 groups of 1024) 1.66 -> 1.48, 512 tokens 5.64 -> 5.38; Mamba2-130m at 4096 tokens 7.97 -> 7.43; 5120
    (4096 + 1024) at 512 / 4096 rows 4.35 / 32.8 -> 4.05 / 32.3, float32 16384 rows 234.7 -> 233.1; 8192
    at 16 warps and 512 rows 6.21 -> 5.83; 16384 x 4096 ungated LayerNorm 67.7 -> 67.5. tune_forward.py, after
    -> first: 8192 columns lost from 2048 rows (LayerNorm + bias gate before at 8 warps 28.1 -> 35.1 at 2048 rows,
    96.2 -> 118.7 at 8192; RMSNorm gate after at 16 warps 26.9 -> 28.5, 95.2 -> 102.7) and won or tied at 512
    (7.6 -> 7.4; 6.1 both); LayerNorm's 12288 = 8192 + 4096 lost at every row count (512 rows 11.7 -> 15.4).
    32-warp tiles lost (4096 x 8192 51.5 -> 53.6, 2048 x 32768 101.4 -> 111.9, 64 x 8192 decode 2.72 -> 2.79):
    statically 32768 spills and 16384 would fit one program an SM instead of two, while 8192 keeps its
    registers and programs an SM (not explained by them; ptxas_report.py).
    Session 16, ungated one-row tiles (tune_forward.py --tile, after -> first, µs at 128 / 512 / 2048 rows):
    RMSNorm 8192 at 8 warps bf16 2.9 / 4.6 / 20.1 -> 2.5 / 4.4 / 19.3, float32 3.8 / 7.5 / 36.4 -> 3.4 / 7.3 /
    34.8; 16384 at 16 warps 3.9 / 8.5 / 37.1 -> 3.5 / 8.0 / 37.1. LayerNorm + bias 8192 lost from 512 rows
    (3.5 / 5.7 / 21.9 -> 3.0 / 6.2 / 27.2), as its gated tiles did from 2048; RMSNorm 16384 from 4096 rows (68.3
    / 131.5-132.0 -> 68.9 / 133.0-133.6 at 4096 / 8192). bf16 RMSNorm 8192 with the gate before the norm, from
    2048 rows at 16 warps (``_elements_a_thread``): 2048 / 8192 rows 28.1 / 98.1 (32 warps after) -> 26.7 / 94.7;
    8 warps first 27.7 / 95.4, and at 4096 / 16384 rows 51.5 / 192 -> 50.4 / 186.2. Not the gate after the norm
    (16 warps 27.3 / 95.2 -> 29.1 / 104.0; 8 warps first 26.9 / 95.2-98.0) nor float32 (32 warps, 8 and 16 first
    a tie: 50.1 / 186.7 -> 50.1-50.4 / 186.3-186.8)."""
    if num_warps >= 32:
        return False
    if head <= 4096:
        return True
    if tail:
        return False
    if rows < wide_tile_min_rows:
        return gated or is_rms_norm
    return is_rms_norm and not gate_after_norm and head <= 8192


def _elements_a_thread(block_n: int, tail: int, rows: int, gated: bool, is_rms_norm: bool, element_size: int,
                       wide_tile_min_rows: int) -> int:
    """Elements of a tile a thread holds, from the padded group width ``block_n``: the 2^26-element sweeps'
    choice (see ``_forward_config``), and fewer for gated tiles where timings away from 2^26 elements found it
    faster (H200, tune_forward.py --tile, 128 rows to 2^26 elements; BENCHMARKS.md).
    Session 14, dtype-blind:
    - groups of at most 128 columns, 8 a thread (16 before): 2048 x 128 gate after 2.1 -> 1.9 us, 512 rows
      1.9 -> 1.75, 2^26 elements 94.7 -> 94.3 (gate before 94.5 -> 93.9); LayerNorm, float32 and groups of
      64 and 32 alike or a tie; groups of 256 lost (8192 rows in groups of 256, 93.5 -> 97.7), 512 and 1024 too;
    - groups padded to 16384 or 32768 columns, 16 a thread (32 before; the 32768 tile had its 32 warps
      already): gated LayerNorm 2048 x 16384 84.8 -> 67.1, 4096 rows 166 -> 127, RMSNorm 60.3 -> 53.1 (gate
      after 62.3 -> 59.9), RMSNorm's 12288 = 8192 + 4096 40.8 -> 39.3; not LayerNorm's head + tail tiles
      (12288: 2048 rows 50.1 -> 80.3, 5461 rows 121 -> 206);
    - RMSNorm head + tail tiles of 4097-6144 columns, 16 a thread from ``wide_tile_min_rows`` rows: 5120 at
      2048 rows 19.2 -> 17.9, 6144 22.05 -> 21.25; below it float32 lost (6144 at 512 rows 7.8 -> 9.0).
    Session 15, by dtype, one-row tiles of 6145-8192 columns padded to 8192 (no tail):
    - float32, 8 a thread (32 warps; 32 a thread before, 16 for RMSNorm from 2048 rows), whatever the norm and
      the gate: RMSNorm gate before at 128 / 512 / 1024 / 2048 rows / 2^26 elements 5.6 / 13.8 / 30.9 / 57.8 /
      208.0 -> 4.0 / 13.9 / 27.1 / 50.2 / 187.2 us, gate after 4.8 / 15.0 / 28.7 / 50.6 / 187.9 -> 3.9 / 13.5
      / 27.0 / 50.0 / 187.2, LayerNorm + bias gate before 5.1 / 17.7 / 30.1 / 53.3 / 190.6 -> 4.7 / 14.9 / 28.1
      / 51.1 / 188.3 (16 a thread lost at 512 rows, 13.8 -> 17.3);
    - bf16 and float16 RMSNorm, 16 a thread at every row count (was from 2048 rows): gate after 3.4 / 6.5 /
      16.1 -> 3.2 / 6.1 / 14.4 at 128 / 512 / 1024 rows, gate before 3.7 / 6.3 / 15.6 -> 3.2 / 6.4 / 15.4;
      not LayerNorm (32 a thread: 16 and 8 lost from 1024 rows, 2^26 96.0 -> 102.8 / 117.1). With the gate
      before the norm from ``wide_tile_min_rows`` rows 8 a thread won against 16 with the weight loaded after
      the statistics (2048 rows 28.9 -> 27.9, 2^26 99.6 -> 97.8); session 16 loads it first there, and 16 a
      thread wins then (see ``_weight_first``).
    float64 keeps the 2-byte rule (not timed).
    """
    if block_n <= 1024:
        return (8 if block_n <= 128 else 16) if gated else 32
    if block_n <= 4096:
        return 8 if gated else 32
    if not gated:
        return 32
    if block_n >= 16384:
        return 16 if is_rms_norm or not tail else 32
    if tail:
        return 16 if is_rms_norm and rows >= wide_tile_min_rows else 32
    if element_size == 4:
        return 8
    return 16 if is_rms_norm else 32


def looped_config(gated: bool, gate_after_norm: bool, wide_block: int) -> ForwardConfig:
    """The looped kernel's configuration for a group past the one-pass limit.

    Gated: 8 elements a thread and L2 hints (pass 1 keeps its lines, pass 2 drops them); H200, session 7, four
    gated shapes of 65536-131072 columns: 3.5-13 % faster than 16 per thread without hints, which ungated groups
    keep (LayerNorm in one group of 49152: 19 % slower with the gated choice). A gate after the norm also
    prefetches the next chunk, one address a thread (session 10: 65536 and 131072 columns 3-4 % faster; a gate
    before the norm, whose pass 1 reads z too, and ungated groups 2-20 % slower). Pass 2 stores the output
    evict_first, so that L2 drops it before the x that pass 2 has yet to read again, gated or not (session 17,
    gate after the norm: 1024 x 65536 116.7-117.0 -> 114.9-115.1 us, 2048 x 65536 227.3 -> 224.0, 512 x 131072
    129.6 -> 128.3; ungated LayerNorm, three runs: 1024 x 65536 100.6-101.5 -> 100.3-100.4, 1365 x 49152
    96.5-97.2 -> 95.6-96.3).
    """
    if gated:
        num_warps = max(1, min(32, wide_block // 256))
        return ForwardConfig(block_m=1, block_n=wide_block, num_warps=num_warps, wide=True, reverse_pass2=True,
                             l2_hints=True, store_hint=True,
                             prefetch_step=one_address_a_thread(wide_block, num_warps) if gate_after_norm else 0)
    return ForwardConfig(block_m=1, block_n=wide_block, num_warps=max(1, min(16, wide_block // 512)), wide=True,
                         reverse_pass2=True, store_hint=True)


def one_address_a_thread(tile_elements: int, num_warps: int) -> int:
    """The prefetch step that gives each thread of a program one address of its tile (0, no prefetch, when
    the tile has fewer elements than threads): the step the timings favoured (BENCHMARKS.md, sessions 8 and 10)."""
    return tile_elements // (32 * num_warps)


def _row_tile_columns(group_size: int, block_m: int, split_several_rows: bool, padded_up_to: int = 0
                      ) -> tuple[int, int]:
    """``(head, tail)`` columns of a tile of ``block_m`` rows: split as ``head_and_tail`` in one-row tiles
    (or with ``split_several_rows``) unless the group pads to at most ``padded_up_to`` columns, else the group
    padded to a power of two."""
    block_n = next_power_of_2(group_size)
    if block_n > padded_up_to and (block_m == 1 or split_several_rows):
        return head_and_tail(group_size)
    return block_n, 0


def head_and_tail(group_size: int) -> tuple[int, int]:
    """The group as a power-of-two head tile plus a power-of-two tail tile where that takes fewer lanes than
    padding it (5120 = 4096 + 1024, not 8192): ``(head, tail)``; else ``(padded size, 0)``."""
    block_n = next_power_of_2(group_size)
    if group_size != block_n and block_n >= 64:
        head = block_n // 2
        tail = next_power_of_2(group_size - head)
        if head + tail < block_n:
            return head, tail
    return block_n, 0


def as_rows(t: torch.Tensor, p: Problem) -> torch.Tensor:
    """View ``t`` as (M, N) with unit column stride, copying only when no such view exists."""
    if t.dim() == 2 and t.stride(1) == 1:  # the common case, without a reshape call
        return t
    t2 = t.reshape(p.rows, p.cols)
    if t2.stride(-1) != 1 and p.cols > 1:
        t2 = t2.contiguous()
    return t2


@functools.lru_cache(maxsize=256)
def kernel_flags(has_z: bool, has_weight: bool, norm_before_gate: bool, is_rms_norm: bool, activation: str,
                 stat_dtype: torch.dtype) -> tuple[tuple[str, object], ...]:
    """The constexpr flags the forward and backward kernels share, as ``(name, value)`` pairs."""
    return (
        ("HAS_Z", has_z),
        ("NORM_BEFORE_GATE", norm_before_gate),
        ("SIGMOID_GATE", activation == "sigmoid"),
        ("IS_RMS_NORM", is_rms_norm),
        ("HAS_WEIGHT", has_weight),
        ("COMPUTE_DTYPE", tl.float64 if stat_dtype == torch.float64 else tl.float32),
    )


def cdiv(a: int, b: int) -> int:
    """Ceiling division of ints (``triton.cdiv`` is a jit-function wrapper: ~1 µs a call on the host)."""
    return -(-a // b)


def split_eps(eps: float) -> tuple[float, float]:
    """``(hi, lo)`` float32 values whose sum is ``eps`` to about 48 bits (see ``_eps``)."""
    (hi,) = struct.unpack("f", struct.pack("f", eps))  # rounded to float32 without a tensor (hot path)
    return hi, eps - hi


def _device_guard(x: torch.Tensor):
    """Make x's GPU the current one for the launch (Triton launches on the current device)."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=1024)
def _launch_options(cfg: ForwardConfig, flags: tuple, has_bias: bool, grid_2d: bool = False
                    ) -> tuple[tuple[str, object], ...]:
    if cfg.wide:
        tile = (("BLOCK_N", cfg.block_n), ("REVERSE_PASS2", cfg.reverse_pass2), ("L2_HINTS", cfg.l2_hints),
                ("REDUCE_ONCE", cfg.reduce_once), ("PREFETCH_STEP", cfg.prefetch_step),
                ("STORE_HINT", cfg.store_hint),
                ("PERSISTENT", cfg.programs_per_sm > 0))
    else:
        tile = (("BLOCK_M", cfg.block_m), ("BLOCK_N", cfg.block_n), ("BLOCK_TAIL", cfg.block_tail),
                ("GRID_2D", grid_2d), ("WEIGHT_FIRST", cfg.weight_first))
    cap = (("maxnreg", cfg.max_registers),) if cfg.max_registers else ()
    return (*tile, ("HAS_BIAS", has_bias), *flags, ("num_warps", cfg.num_warps), *cap)


@functools.lru_cache(maxsize=256)
def _split_launch_options(cfg: ForwardConfig, flags: tuple, has_bias: bool, parts: int, stage: int
                          ) -> tuple[tuple[str, object], ...]:
    """``_fwd_split_kernel``'s constexprs and options; stage 0 (one launch) is cooperative: the driver then
    refuses a grid that cannot be co-resident instead of letting its programs wait forever."""
    cooperative = (("launch_cooperative_grid", True),) if stage == 0 else ()
    cap = (("maxnreg", cfg.max_registers),) if cfg.max_registers else ()
    return (("BLOCK_N", cfg.block_n), ("PARTS_BLOCK", next_power_of_2(parts)), ("STAGE", stage),
            ("HAS_BIAS", has_bias), *flags, ("num_warps", cfg.num_warps), *cooperative, *cap)


_FWD = CachedKernel(_fwd_kernel)
_FWD_GENERIC = CachedKernel(triton.jit(_fwd_kernel.fn, do_not_specialize=UNSPECIALIZED))
_FWD_WIDE = CachedKernel(_fwd_wide_kernel)
_FWD_SPLIT = CachedKernel(_fwd_split_kernel)


def kernel_and_options(cfg: ForwardConfig, flags: tuple, has_bias: bool, group_size: int
                       ) -> tuple[triton.JITFunction, tuple[tuple[str, object], ...]]:
    """The Triton kernel that runs ``cfg`` and its constexprs and options on a 1-D grid (the split kernel's
    one-launch form), for tools that compile kernels without launching them."""
    if cfg.split:
        return _fwd_split_kernel, _split_launch_options(cfg, flags, has_bias, cdiv(group_size, cfg.block_n), 0)
    return (_fwd_wide_kernel if cfg.wide else _fwd_kernel), _launch_options(cfg, flags, has_bias)


def fused_forward_kernel(cfg: ForwardConfig) -> CachedKernel:
    """The build of ``_fwd_kernel`` that runs the tile ``cfg`` (see ``needs_generic_build``)."""
    return _FWD_GENERIC if needs_generic_build(cfg.block_m, cfg.block_tail) else _FWD


def norm_gated_fwd_triton(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
    activation: str = "silu",
    config: ForwardConfig | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward; return ``(out, mean, rstd)``.

    ``config`` overrides the tuned tile shape (for tuning scripts). With ``out`` given, the result is written
    into it and it is returned: directly when it is contiguous, else through a temporary and ``out.copy_``.
    """
    p = validate(x, weight, bias, z, eps, group_size, activation)
    if out is not None:
        validate_out(out, x, z)
    # the kernels write rows of N contiguous elements: any contiguous tensor of x's shape (no view needed, and
    # a view costs about as much as an allocation at decode sizes)
    direct = out is not None and out.is_contiguous()
    result = out if direct else torch.empty_like(x, memory_format=torch.contiguous_format)  # cheaper than empty
    rstd = torch.empty((p.ngroups, p.rows), dtype=p.stat_dtype, device=x.device)
    mean = torch.empty((0,) if is_rms_norm else (p.ngroups, p.rows), dtype=p.stat_dtype, device=x.device)
    if p.rows == 0:
        return result if out is None else out, mean, rstd
    x2 = as_rows(x, p)
    z2 = as_rows(z, p) if z is not None else x2
    cfg = config or forward_config(p.group_size, p.rows, z is not None, norm_before_gate, is_rms_norm, p.ngroups,
                                   x.element_size())
    flags = kernel_flags(z is not None, weight is not None, norm_before_gate, is_rms_norm, activation, p.stat_dtype)
    args = (
        x2, z2,
        weight.contiguous() if weight is not None else x2,
        bias.contiguous() if bias is not None else x2,
        result,
        rstd if is_rms_norm else mean,  # MEAN is never written for RMSNorm
        rstd,
        x2.stride(0), z2.stride(0),
        p.rows, p.group_size, p.ngroups, *split_eps(eps),
    )
    with _device_guard(x):
        if cfg.split:
            _launch_split(x.device, cfg, p, args, flags, bias is not None)
        elif cfg.wide:
            programs = p.rows * p.ngroups
            if cfg.programs_per_sm:
                programs = min(programs, cfg.programs_per_sm * sm_count(x.device))
            _FWD_WIDE.launch(x.device, programs, args, _launch_options(cfg, flags, bias is not None))
        else:
            row_tiles = cdiv(p.rows, cfg.block_m)
            # head + tail tiles of several rows stay on the 1-D grid: on the 2-D one Triton 3.6 got LayerNorm
            # wrong (H200, session 6: NaN or wrong statistics; scripts/triton_ngroups_repro.py)
            grid_2d = (GRID_2D_GROUPS and p.ngroups > 1 and row_tiles <= MAX_GRID_Y
                       and not needs_generic_build(cfg.block_m, cfg.block_tail))
            grid = (p.ngroups, row_tiles) if grid_2d else row_tiles * p.ngroups
            options = _launch_options(cfg, flags, bias is not None, grid_2d)
            fused_forward_kernel(cfg).launch(x.device, grid, args, options)
    if out is None:
        return result, mean, rstd
    if not direct:
        out.copy_(result)
    return out, mean, rstd


# Devices whose driver refused a cooperative launch of the split kernel (see _launch_split).
COOPERATIVE_REFUSED: set[torch.device] = set()


def cooperative_launch_possible(device: torch.device) -> bool:
    """Whether the split kernel may run as one cooperative launch on ``device``: a compiled kernel on a GPU (the
    interpreter runs programs one after another, so one waiting for another would never return) whose driver
    has not refused one."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1" and device not in COOPERATIVE_REFUSED


def _launch_split(device: torch.device, cfg: ForwardConfig, p: Problem, args: tuple, flags: tuple,
                  has_bias: bool) -> None:
    """Launch ``_fwd_split_kernel``: in one cooperative launch where its grid can be co-resident, else (the
    interpreter, more parts than fit at once, a driver that refused the cooperative launch) in two, statistics
    then output."""
    parts = cdiv(p.group_size, cfg.block_n)
    items = p.rows * p.ngroups * parts
    partials = torch.empty(2 * items, dtype=p.stat_dtype, device=device)

    def split_args(arrived: torch.Tensor) -> tuple:
        # the launcher's arguments (the seven tensors, two strides, M, group_size, ngroups, eps) with the split
        # kernel's two buffers after the tensors and the part count after ngroups
        return (*args[:7], partials, arrived, *args[7:12], parts, *args[12:])

    if cooperative_launch_possible(device):
        arrived = torch.zeros(p.rows * p.ngroups, dtype=torch.int32, device=device)
        one_launch_args = split_args(arrived)
        one_launch_options = _split_launch_options(cfg, flags, has_bias, parts, 0)
        per_sm = _FWD_SPLIT.resident_per_sm(device, one_launch_args, one_launch_options) or 1
        if cfg.programs_per_sm:
            per_sm = min(per_sm, cfg.programs_per_sm)
        programs = min(items, per_sm * sm_count(device) // parts * parts)
        if programs:
            try:
                _FWD_SPLIT.launch(device, programs, one_launch_args, one_launch_options)
                return
            except RuntimeError as e:
                # the driver refused the grid as too large to be co-resident (fewer multiprocessors than the
                # device reports, as under MPS with a share of them): two launches from now on, on this device
                if "cooperative" not in str(e).lower():
                    raise
                COOPERATIVE_REFUSED.add(device)
    programs = min(items, max(1, cfg.programs_per_sm * sm_count(device))) if cfg.programs_per_sm else items
    for stage in (1, 2):
        options = _split_launch_options(cfg, flags, has_bias, parts, stage)
        _FWD_SPLIT.launch(device, programs, split_args(partials), options)
