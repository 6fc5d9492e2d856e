"""Triton backward kernels of the gated norm and their launcher.

The math, per row and group (``ops.bwd`` documents the op): with ``xhat`` rebuilt from the saved statistics,
``dy'`` = dy (times the gate when it is applied after the norm) and ``dxhat = dy' * w``,

    dweight = sum over rows of dy' * xhat,   dbias = sum over rows of dy',
    dx' = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))   (no mean(dxhat) for RMSNorm),

then the gate's chain rule gives dz and dx.

Three kernels:
- ``_bwd_kernel``: each program owns one column block (a whole group, held as one BLOCK_N tile or as a
  BLOCK_N head plus a BLOCK_TAIL tile, or a BLOCK_N chunk of a wide group) and loops over tiles of BLOCK_M
  rows, row_programs apart (a persistent grid of a few programs per SM, at most as many as fit on it at
  once), asking L2 for its next tile before working on each where the rule says so. It writes dx and dz of
  its tiles and keeps the dweight/dbias sums of its columns in registers; at the end each program writes
  them to its row of a (row_programs, N) partial buffer, which one deterministic sum over rows finishes.
  When a group fits in registers the two row means that dx needs are reduced in the tile itself; for wide
  groups they come precomputed from
- ``_bwd_row_sums_kernel``: one row x one wide group per program, streamed in BLOCK_N chunks, writing
  ``mean(dxhat)`` and ``mean(dxhat * xhat)`` of each (group, row).
- ``_sum_partials_kernel``: that sum of the partials' rows for rows of SUM_KERNEL_MIN_COLUMNS columns or more
  (``torch.sum`` below), a program per 32 columns, in the gradient's dtype.
Programs are numbered on a 1-D grid, column block fastest. Row offsets are 64-bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._validation import requested_grads, validate_backward
from .forward import (
    UNSPECIALIZED,
    _activate,
    _device_guard,
    _div,
    _sigmoid,
    _times_gate,
    as_rows,
    cdiv,
    head_and_tail,
    kernel_flags,
    needs_generic_build,
    one_address_a_thread,
    prefetch_l2,
)
from .launch import CachedKernel, next_power_of_2
from .launch import sm_count as _sm_count  # a module name of its own: tests replace it

# Largest group (in elements, padded to a power of two) that one tile holds in registers.
MAX_FUSED_BLOCK = 8192
# Column chunk of wide groups.
WIDE_BLOCK = 4096
# Elements of a tile (BLOCK_M x BLOCK_N) when the group is narrower than that.
TILE_ELEMENTS = 1024
# Default programs of the persistent grid per streaming multiprocessor.
PROGRAMS_PER_SM = 4
# Columns from which the dweight/dbias partials are summed by _sum_partials_kernel (a program per 32 columns)
# rather than torch.sum, whose reduction of a few hundred rows ran on few SMs (H200, session 9). H200, session
# 10 (scripts/tune_partials_sum.py): the kernel 1.15-2.4x faster from 1024 columns (264-2112 rows), 0.7-0.8x on
# 2112 rows of 128-512 columns (the narrow tiles' partials), 1.24x on 1056 x 512.
SUM_KERNEL_MIN_COLUMNS = 1024
SUM_PARTIALS_BLOCK_N = 32
SUM_PARTIALS_OPTIONS = (("BLOCK_M", 64), ("BLOCK_N", SUM_PARTIALS_BLOCK_N), ("num_warps", 4))


@triton.jit
def _gate_grad(z, gate, SIGMOID_GATE: tl.constexpr):
    """act'(z) given gate = act(z): sigmoid s (1 - s); silu s (1 + z (1 - s)) = s (1 + z - gate)."""
    if SIGMOID_GATE:
        return gate * (1.0 - gate)
    return _sigmoid(z) * (1.0 + z - gate)


@triton.jit
def _load_tile(X, Z, DY, x_offsets, z_offsets, dy_offsets, mask, mean, rstd,
               HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
               IS_RMS_NORM: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, EVICTION: tl.constexpr):
    """Load x, z and dy; return them with the gate and xhat, in the compute dtype.

    Masked lanes load 0, so their dy is 0 and they add nothing to any sum.
    """
    x = tl.load(X + x_offsets, mask=mask, other=0.0, eviction_policy=EVICTION).to(COMPUTE_DTYPE)
    dy = tl.load(DY + dy_offsets, mask=mask, other=0.0, eviction_policy=EVICTION).to(COMPUTE_DTYPE)
    z = x  # placeholders when there is no gate; never used then
    gate = x
    xhat = x
    if HAS_Z:
        z = tl.load(Z + z_offsets, mask=mask, other=0.0, eviction_policy=EVICTION).to(COMPUTE_DTYPE)
        gate = _activate(z, SIGMOID_GATE)
        if not NORM_BEFORE_GATE:
            xhat = _times_gate(x, gate)
    if not IS_RMS_NORM:
        xhat = xhat - mean
    return x, z, dy, gate, xhat * rstd


@triton.jit
def _load_stats(MEAN, RSTD, offsets, mask, IS_RMS_NORM: tl.constexpr):
    rstd = tl.load(RSTD + offsets, mask=mask, other=0.0)
    mean = rstd  # placeholder for RMSNorm; never used then
    if not IS_RMS_NORM:
        mean = tl.load(MEAN + offsets, mask=mask, other=0.0)
    return mean, rstd


@triton.jit
def _prefetch_l2(PTR, rows, row_mask, stride_row, col_idx, col_mask):
    """Prefetch the lines of these rows and columns into L2 (``prefetch_l2``); masked-off rows and columns are
    clamped onto valid ones."""
    rows = tl.where(row_mask, rows, 0)
    col_idx = tl.where(col_mask, col_idx, 0)
    prefetch_l2(PTR + rows[:, None] * stride_row + col_idx[None, :])


@triton.jit
def _prefetch_tile(X, Z, DY, rows, row_mask, start, group, group_size, stride_x_row, stride_z_row, stride_dy_row,
                   BLOCK: tl.constexpr, STEP: tl.constexpr, HAS_Z: tl.constexpr):
    """Prefetch x, z and dy of a tile's BLOCK columns of the group from ``start``, one address every STEP
    elements."""
    ADDRESSES: tl.constexpr = BLOCK // STEP if BLOCK > STEP else 1
    cols = start + tl.arange(0, ADDRESSES) * STEP
    col_mask = cols < group_size
    col_idx = group * group_size + cols
    _prefetch_l2(X, rows, row_mask, stride_x_row, col_idx, col_mask)
    _prefetch_l2(DY, rows, row_mask, stride_dy_row, col_idx, col_mask)
    if HAS_Z:
        _prefetch_l2(Z, rows, row_mask, stride_z_row, col_idx, col_mask)


@triton.jit
def _load_affine(W, B, col_idx, col_mask, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                 COMPUTE_DTYPE: tl.constexpr):
    """weight and bias of these columns (1 and 0 where absent), in the compute dtype."""
    w = tl.full(col_idx.shape, 1.0, COMPUTE_DTYPE)
    b = tl.zeros(col_idx.shape, COMPUTE_DTYPE)
    if HAS_WEIGHT:
        w = tl.load(W + col_idx, mask=col_mask, other=0.0).to(COMPUTE_DTYPE)
    if HAS_BIAS:
        b = tl.load(B + col_idx, mask=col_mask, other=0.0).to(COMPUTE_DTYPE)
    return w, b


@triton.jit
def _bwd_tile_in(X, Z, W, B, DY, DZ, rows, row_mask, cols, group, group_size, N, mean, rstd,
                 stride_x_row, stride_z_row, stride_dy_row, w_held, b_held,
                 HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
                 IS_RMS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                 HAS_DZ: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, EVICTION: tl.constexpr,
                 HOLD_AFFINE: tl.constexpr):
    """Load one tile (rows x cols of a group); with the gate after the norm, write its dz and fold the gate
    into dy. Returns what the column sums and dx need. With HOLD_AFFINE, weight and bias are ``w_held`` and
    ``b_held``, loaded before the row loop."""
    col_mask = cols < group_size
    mask = row_mask[:, None] & col_mask[None, :]
    col_idx = group * group_size + cols
    x, z, dy, gate, xhat = _load_tile(
        X, Z, DY, rows[:, None] * stride_x_row + col_idx[None, :], rows[:, None] * stride_z_row + col_idx[None, :],
        rows[:, None] * stride_dy_row + col_idx[None, :], mask, mean[:, None], rstd[:, None],
        HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, IS_RMS_NORM, COMPUTE_DTYPE, EVICTION)
    out_offsets = rows[:, None] * N + col_idx[None, :]
    if HOLD_AFFINE:
        w, b = w_held, b_held
    else:  # reloaded per tile (cache hits) rather than held: registers are the limit in wide tiles
        w, b = _load_affine(W, B, col_idx, col_mask, HAS_WEIGHT, HAS_BIAS, COMPUTE_DTYPE)
    if HAS_Z and NORM_BEFORE_GATE:  # out = y * gate with y = xhat * w + b
        if HAS_DZ:
            y = xhat * w[None, :] + b[None, :]
            tl.store(DZ + out_offsets, dy * y * _gate_grad(z, gate, SIGMOID_GATE), mask=mask)
        dy = dy * gate
    return x, z, dy, gate, xhat, w, mask, out_offsets


@triton.jit
def _add_column_sums(dw_sum, db_sum, dy, xhat, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr, KEEP_ROWS: tl.constexpr):
    """A tile's contribution to the dweight and dbias sums of its columns; with KEEP_ROWS the sums are tiles
    themselves, added element by element (their rows are summed once, after the loop)."""
    if KEEP_ROWS:
        if HAS_DW:
            dw_sum += dy * xhat
        if HAS_DB:
            db_sum += dy
    else:
        if HAS_DW:
            dw_sum += tl.sum(dy * xhat, axis=0)
        if HAS_DB:
            db_sum += tl.sum(dy, axis=0)
    return dw_sum, db_sum


@triton.jit
def _bwd_tile_out(DX, DZ, x, z, gate, xhat, dxhat, rstd, mean_dxhat, mean_dxhat_xhat, mask, out_offsets,
                  HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
                  IS_RMS_NORM: tl.constexpr, HAS_DX: tl.constexpr, HAS_DZ: tl.constexpr):
    """dx' of one tile from the row means; write dx, and dz when the gate came before the norm."""
    dx = dxhat - xhat * mean_dxhat_xhat[:, None]
    if not IS_RMS_NORM:
        dx = dx - mean_dxhat[:, None]
    dx = dx * rstd[:, None]
    if HAS_Z and not NORM_BEFORE_GATE:  # the norm's input was x * gate
        if HAS_DZ:
            tl.store(DZ + out_offsets, dx * x * _gate_grad(z, gate, SIGMOID_GATE), mask=mask)
        dx = dx * gate
    if HAS_DX:
        tl.store(DX + out_offsets, dx, mask=mask)


@triton.jit
def _bwd_kernel(
    X, Z, W, B, DY, MEAN, RSTD, ROW_SUMS, DX, DZ, DW_PARTIAL, DB_PARTIAL,
    stride_x_row, stride_z_row, stride_dy_row,
    M, group_size, ngroups, chunks_per_group,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_TAIL: tl.constexpr,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
    IS_RMS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DX: tl.constexpr, HAS_DZ: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,
    ROW_SUMS_GIVEN: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, RELOAD_TILE: tl.constexpr,
    PREFETCH_STEP: tl.constexpr, LOOP_STAGES: tl.constexpr, COLUMN_SUMS_ONCE: tl.constexpr,
    HOLD_AFFINE: tl.constexpr,
):
    # With BLOCK_TAIL > 0 (whole groups only: chunks_per_group == 1) a group is a BLOCK_N head tile plus a
    # BLOCK_TAIL tile after it, as in the forward: 5120 columns as 4096 + 1024 lanes instead of 8192.
    GATE_BEFORE: tl.constexpr = HAS_Z and not NORM_BEFORE_GATE
    NEEDS_DX: tl.constexpr = HAS_DX or (GATE_BEFORE and HAS_DZ)  # dx' is needed for dx, or for dz
    # RELOAD_TILE: the tile is loaded again (an L1 or L2 hit) after the row sums instead of being held across them.
    # PREFETCH_STEP > 0: each program asks L2 for its next tile (one address every PREFETCH_STEP elements)
    # before working on this one, so that a program's loads wait on L2 rather than DRAM; LOOP_STAGES > 0:
    # Triton's software pipelining of the row loop at that many stages (the rule: _backward_config).
    # COLUMN_SUMS_ONCE: the dweight and dbias sums are kept as tiles and their rows summed once, after the
    # loop, instead of once a tile (a reduction across warps, through shared memory, when the tile's rows lie
    # in different warps); HOLD_AFFINE: weight and bias loaded once, before the loop, instead of a tile at a
    # time (their layout conversion, through shared memory, once too); the rule sets both for tiles of several rows.
    FIRST_EVICTION: tl.constexpr = "evict_last" if RELOAD_TILE else ""
    pid = tl.program_id(0)
    col_blocks = ngroups * chunks_per_group
    col_block = pid % col_blocks
    row_program = pid // col_blocks
    row_programs = tl.num_programs(0) // col_blocks
    group = col_block // chunks_per_group
    chunk_start = (col_block % chunks_per_group) * BLOCK_N
    cols = chunk_start + tl.arange(0, BLOCK_N)  # within the group
    tail_cols = BLOCK_N + tl.arange(0, BLOCK_TAIL if BLOCK_TAIL > 0 else 1)
    N = ngroups * group_size
    count = tl.cast(group_size, COMPUTE_DTYPE)

    if HOLD_AFFINE:
        w_held, b_held = _load_affine(W, B, group * group_size + cols, cols < group_size, HAS_WEIGHT, HAS_BIAS,
                                      COMPUTE_DTYPE)
        w_tail_held, b_tail_held = _load_affine(W, B, group * group_size + tail_cols, tail_cols < group_size,
                                                HAS_WEIGHT, HAS_BIAS, COMPUTE_DTYPE)
    else:  # placeholders, never read
        w_held, b_held, w_tail_held, b_tail_held = 0.0, 0.0, 0.0, 0.0
    if COLUMN_SUMS_ONCE:
        dw_sum = tl.zeros((BLOCK_M, BLOCK_N), COMPUTE_DTYPE)
        db_sum = tl.zeros((BLOCK_M, BLOCK_N), COMPUTE_DTYPE)
        dw_tail = tl.zeros((BLOCK_M, BLOCK_TAIL if BLOCK_TAIL > 0 else 1), COMPUTE_DTYPE)
        db_tail = tl.zeros((BLOCK_M, BLOCK_TAIL if BLOCK_TAIL > 0 else 1), COMPUTE_DTYPE)
    else:
        dw_sum = tl.zeros((BLOCK_N,), COMPUTE_DTYPE)
        db_sum = tl.zeros((BLOCK_N,), COMPUTE_DTYPE)
        dw_tail = tl.zeros(tail_cols.shape, COMPUTE_DTYPE)
        db_tail = tl.zeros(tail_cols.shape, COMPUTE_DTYPE)

    for tile in tl.range(row_program, tl.cdiv(M, BLOCK_M), row_programs,
                         num_stages=LOOP_STAGES if LOOP_STAGES > 0 else None):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        rows = rows.to(tl.int64)
        if PREFETCH_STEP > 0:
            next_rows = rows + row_programs * BLOCK_M
            next_mask = next_rows < M
            _prefetch_tile(X, Z, DY, next_rows, next_mask, chunk_start, group, group_size, stride_x_row,
                           stride_z_row, stride_dy_row, BLOCK_N, PREFETCH_STEP, HAS_Z)
            if BLOCK_TAIL > 0:
                _prefetch_tile(X, Z, DY, next_rows, next_mask, BLOCK_N, group, group_size, stride_x_row,
                               stride_z_row, stride_dy_row, BLOCK_TAIL, PREFETCH_STEP, HAS_Z)
        stat_offsets = group.to(tl.int64) * M + rows
        mean, rstd = _load_stats(MEAN, RSTD, stat_offsets, row_mask, IS_RMS_NORM)
        x, z, dy, gate, xhat, w, mask, out_offsets = _bwd_tile_in(
            X, Z, W, B, DY, DZ, rows, row_mask, cols, group, group_size, N, mean, rstd,
            stride_x_row, stride_z_row, stride_dy_row, w_held, b_held, HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE,
            IS_RMS_NORM, HAS_WEIGHT, HAS_BIAS, HAS_DZ, COMPUTE_DTYPE, FIRST_EVICTION, HOLD_AFFINE)
        dw_sum, db_sum = _add_column_sums(dw_sum, db_sum, dy, xhat, HAS_DW, HAS_DB, COLUMN_SUMS_ONCE)
        if BLOCK_TAIL > 0:
            x_t, z_t, dy_t, gate_t, xhat_t, w_t, mask_t, out_offsets_t = _bwd_tile_in(
                X, Z, W, B, DY, DZ, rows, row_mask, tail_cols, group, group_size, N, mean, rstd,
                stride_x_row, stride_z_row, stride_dy_row, w_tail_held, b_tail_held, HAS_Z, NORM_BEFORE_GATE,
                SIGMOID_GATE, IS_RMS_NORM, HAS_WEIGHT, HAS_BIAS, HAS_DZ, COMPUTE_DTYPE, FIRST_EVICTION, HOLD_AFFINE)
            dw_tail, db_tail = _add_column_sums(dw_tail, db_tail, dy_t, xhat_t, HAS_DW, HAS_DB, COLUMN_SUMS_ONCE)

        if NEEDS_DX:
            dxhat = dy * w[None, :]
            if BLOCK_TAIL > 0:
                dxhat_t = dy_t * w_t[None, :]
            if ROW_SUMS_GIVEN:
                mean_dxhat = tl.load(ROW_SUMS + stat_offsets, mask=row_mask, other=0.0)
                mean_dxhat_xhat = tl.load(ROW_SUMS + ngroups * M + stat_offsets, mask=row_mask, other=0.0)
            else:
                sum_dxhat = tl.sum(dxhat, axis=1)
                sum_dxhat_xhat = tl.sum(dxhat * xhat, axis=1)
                if BLOCK_TAIL > 0:
                    sum_dxhat += tl.sum(dxhat_t, axis=1)
                    sum_dxhat_xhat += tl.sum(dxhat_t * xhat_t, axis=1)
                mean_dxhat = _div(sum_dxhat, count, COMPUTE_DTYPE)
                mean_dxhat_xhat = _div(sum_dxhat_xhat, count, COMPUTE_DTYPE)
            if RELOAD_TILE:  # dz of a gate after the norm was written by the first load: not again
                x, z, dy, gate, xhat, w, mask, out_offsets = _bwd_tile_in(
                    X, Z, W, B, DY, DZ, rows, row_mask, cols, group, group_size, N, mean, rstd,
                    stride_x_row, stride_z_row, stride_dy_row, w_held, b_held, HAS_Z, NORM_BEFORE_GATE,
                    SIGMOID_GATE, IS_RMS_NORM, HAS_WEIGHT, HAS_BIAS, False, COMPUTE_DTYPE, "evict_first", HOLD_AFFINE)
                dxhat = dy * w[None, :]
                if BLOCK_TAIL > 0:
                    x_t, z_t, dy_t, gate_t, xhat_t, w_t, mask_t, out_offsets_t = _bwd_tile_in(
                        X, Z, W, B, DY, DZ, rows, row_mask, tail_cols, group, group_size, N, mean, rstd,
                        stride_x_row, stride_z_row, stride_dy_row, w_tail_held, b_tail_held, HAS_Z,
                        NORM_BEFORE_GATE, SIGMOID_GATE, IS_RMS_NORM, HAS_WEIGHT, HAS_BIAS, False, COMPUTE_DTYPE,
                        "evict_first", HOLD_AFFINE)
                    dxhat_t = dy_t * w_t[None, :]
            _bwd_tile_out(DX, DZ, x, z, gate, xhat, dxhat, rstd, mean_dxhat, mean_dxhat_xhat, mask, out_offsets,
                          HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, IS_RMS_NORM, HAS_DX, HAS_DZ)
            if BLOCK_TAIL > 0:
                _bwd_tile_out(DX, DZ, x_t, z_t, gate_t, xhat_t, dxhat_t, rstd, mean_dxhat, mean_dxhat_xhat, mask_t,
                              out_offsets_t, HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, IS_RMS_NORM, HAS_DX, HAS_DZ)

    if COLUMN_SUMS_ONCE:
        dw_sum, db_sum = tl.sum(dw_sum, axis=0), tl.sum(db_sum, axis=0)
        dw_tail, db_tail = tl.sum(dw_tail, axis=0), tl.sum(db_tail, axis=0)
    partial_row = row_program.to(tl.int64) * N + group * group_size
    col_mask = cols < group_size
    if HAS_DW:
        tl.store(DW_PARTIAL + partial_row + cols, dw_sum, mask=col_mask)
    if HAS_DB:
        tl.store(DB_PARTIAL + partial_row + cols, db_sum, mask=col_mask)
    if BLOCK_TAIL > 0:
        tail_mask = tail_cols < group_size
        if HAS_DW:
            tl.store(DW_PARTIAL + partial_row + tail_cols, dw_tail, mask=tail_mask)
        if HAS_DB:
            tl.store(DB_PARTIAL + partial_row + tail_cols, db_tail, mask=tail_mask)


@triton.jit
def _bwd_row_sums_kernel(
    X, Z, W, DY, MEAN, RSTD, ROW_SUMS,
    stride_x_row, stride_z_row, stride_dy_row,
    M, group_size, ngroups,
    BLOCK_N: tl.constexpr,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
    IS_RMS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    group = pid % ngroups
    row = (pid // ngroups).to(tl.int64)
    stat_offset = group.to(tl.int64) * M + row
    mean, rstd = _load_stats(MEAN, RSTD, stat_offset, True, IS_RMS_NORM)

    sum_dxhat = tl.zeros((BLOCK_N,), COMPUTE_DTYPE)
    sum_dxhat_xhat = tl.zeros((BLOCK_N,), COMPUTE_DTYPE)
    for start in range(0, group_size, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < group_size
        col_idx = group * group_size + cols
        _, _, dy, gate, xhat = _load_tile(
            X, Z, DY, row * stride_x_row + col_idx, row * stride_z_row + col_idx, row * stride_dy_row + col_idx,
            col_mask, mean, rstd, HAS_Z, NORM_BEFORE_GATE, SIGMOID_GATE, IS_RMS_NORM, COMPUTE_DTYPE, "")
        if HAS_Z and NORM_BEFORE_GATE:
            dy = dy * gate
        if HAS_WEIGHT:
            dy = dy * tl.load(W + col_idx, mask=col_mask, other=0.0).to(COMPUTE_DTYPE)
        sum_dxhat += dy
        sum_dxhat_xhat += dy * xhat
    count = tl.cast(group_size, COMPUTE_DTYPE)
    tl.store(ROW_SUMS + stat_offset, _div(tl.sum(sum_dxhat, axis=0), count, COMPUTE_DTYPE))
    tl.store(ROW_SUMS + ngroups * M + stat_offset, _div(tl.sum(sum_dxhat_xhat, axis=0), count, COMPUTE_DTYPE))


@triton.jit
def _sum_partials_kernel(PARTIAL, OUT, rows, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """OUT = the sum over rows of PARTIAL (rows x cols), in OUT's dtype; rows are added in a fixed order, so
    the result is deterministic. One program a BLOCK_N columns."""
    col_idx = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = col_idx < cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), PARTIAL.dtype.element_ty)
    for start in range(0, rows, BLOCK_M):
        row_idx = start + tl.arange(0, BLOCK_M)
        mask = (row_idx < rows)[:, None] & col_mask[None, :]
        acc += tl.load(PARTIAL + row_idx[:, None].to(tl.int64) * cols + col_idx[None, :], mask=mask, other=0.0)
    tl.store(OUT + col_idx, tl.sum(acc, axis=0).to(OUT.dtype.element_ty), mask=col_mask)


@dataclass(frozen=True)
class BackwardConfig:
    block_m: int
    block_n: int
    num_warps: int
    wide: bool
    programs_per_sm: int = PROGRAMS_PER_SM
    block_tail: int = 0  # a tail tile after the BLOCK_N head (whole groups only); 0: none
    reload_tile: bool = False  # load the tile again after its row sums instead of holding it (see the kernel)
    max_registers: int | None = None  # a cap on registers a thread (Triton's maxnreg; spills past it); None: none
    prefetch_step: int = 0  # > 0: prefetch the next tile into L2, an address every this many elements (the kernel)
    loop_stages: int = 0  # > 0: software-pipeline the row loop at this many stages (the kernel)
    column_sums_once: bool = False  # dweight/dbias sums kept as tiles, their rows summed after the loop (the kernel)
    hold_affine: bool = False  # weight and bias loaded once before the row loop, not a tile at a time (the kernel)


def backward_config(group_size: int, rows: int) -> BackwardConfig:
    """Tile shape, warps and persistent-grid size (cached: it runs on every call); see ``_backward_config``."""
    # the module constants are part of the key so that tests can change them
    return _backward_config(group_size, min(rows, TILE_ELEMENTS), MAX_FUSED_BLOCK, WIDE_BLOCK, TILE_ELEMENTS)


@functools.lru_cache(maxsize=4096)
def _backward_config(group_size: int, rows: int, max_fused_block: int, wide_block: int, tile_elements: int
                     ) -> BackwardConfig:
    """Tile shape, warps and persistent-grid size.

    From sweeps on an H200 (scripts/tune_backward.py, bf16; BENCHMARKS.md): tiles of about 1024 elements,
    16 per thread for groups up to 256 columns and 8 per thread above, with up to 16 programs per SM (the
    launcher caps them at what fits at once); groups of 2049-4096 columns one row at 16 per thread (3072 and
    4096: 175 and 210 us, 16 % and 14 % faster than 8); 4097-5120 as a 4096 head and a tail, loaded again
    after the row sums (the whole tile does not stay in registers at 8 warps), 320 vs 334 us on 16384 x 5120;
    up to 8192 one padded row with 32 warps, held (8192: reloading cost 30 %).
    Prefetching each program's next tile into L2, one address a thread (the speed options of BackwardConfig;
    session 8): 16384 x 5120 277 -> 252 us with the row loop in two stages too, groups of 1024 346 -> 332,
    qwen3next's 8 x 128 tiles 182 -> 177; one group of 4096 lost (182 -> 215), so wider groups do not.
    Tiles of several rows of 256 or 512 columns keep their dweight/dbias sums as tiles and hold weight and bias
    (session 9): without, each tile paid a reduction across warps and a layout conversion through shared
    memory; 16384 x 4096 in groups of 256 234 -> 173 us, of 512 392 -> 171, one group 131072 x 512 408 -> 176
    (without the prefetch, which costs 512-column tiles 1-9 % then). Tiles of 64 and 128 columns (16 and 8
    rows) ran 7-10 % slower with the two options, so they keep a sum a tile.
    """
    block_n = next_power_of_2(group_size)
    wide = block_n > max_fused_block
    if wide:
        block_n = wide_block
    elif 4096 < group_size <= 5120:
        head, tail = head_and_tail(group_size)
        return BackwardConfig(1, head, 8, False, 2, tail, reload_tile=True,
                              prefetch_step=one_address_a_thread(head, 8), loop_stages=2)
    block_m = max(1, min(tile_elements // block_n, next_power_of_2(max(rows, 1))))
    tile = block_m * block_n
    # 16 elements a thread also for groups of 1025-2047 columns padded to 2048 (H200, session 13, 16384 rows:
    # 1280 76.5 -> 72.6 us, 1536 82.6 -> 78.6); a group of 2048 keeps 8
    per_thread = 16 if block_n <= 256 or block_n == 4096 or (block_n == 2048 and group_size < 2048) else 8
    num_warps = max(1, min(32, tile // (32 * per_thread)))
    programs_per_sm = max(2, min(16, 16 * 1024 // tile))
    sums_as_tiles = block_m > 1 and block_n >= 256  # and weight and bias held before the loop
    prefetch = not wide and block_n <= 1024 and not (sums_as_tiles and block_n >= 512)
    return BackwardConfig(block_m, block_n, num_warps, wide, programs_per_sm,
                          prefetch_step=one_address_a_thread(tile, num_warps) if prefetch else 0,
                          column_sums_once=sums_as_tiles, hold_affine=sums_as_tiles)


@functools.lru_cache(maxsize=1024)
def _launch_options(cfg: BackwardConfig, flags: tuple, has_bias: bool, want_dx: bool, want_dz: bool,
                    want_dw: bool, want_db: bool, row_sums_given: bool) -> tuple[tuple[str, object], ...]:
    return (("BLOCK_M", cfg.block_m), ("BLOCK_N", cfg.block_n), ("BLOCK_TAIL", cfg.block_tail), *flags,
            ("HAS_BIAS", has_bias),
            ("HAS_DX", want_dx), ("HAS_DZ", want_dz), ("HAS_DW", want_dw), ("HAS_DB", want_db),
            ("ROW_SUMS_GIVEN", row_sums_given), ("RELOAD_TILE", cfg.reload_tile and not row_sums_given),
            ("PREFETCH_STEP", cfg.prefetch_step), ("LOOP_STAGES", cfg.loop_stages),
            ("COLUMN_SUMS_ONCE", cfg.column_sums_once), ("HOLD_AFFINE", cfg.hold_affine),
            ("num_warps", cfg.num_warps), *((("maxnreg", cfg.max_registers),) if cfg.max_registers else ()))


_BWD = CachedKernel(_bwd_kernel)
# head + tail tiles of several rows: the build without the ngroups specialization, as in the forward
_BWD_GENERIC = CachedKernel(triton.jit(_bwd_kernel.fn, do_not_specialize=UNSPECIALIZED))
_BWD_ROW_SUMS = CachedKernel(_bwd_row_sums_kernel)
_SUM_PARTIALS = CachedKernel(_sum_partials_kernel)


def norm_gated_bwd_triton(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    group_size: int | None,
    norm_before_gate: bool,
    is_rms_norm: bool,
    activation: str,
    output_mask: list[bool],
    config: BackwardConfig | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward; ``config`` overrides the tuned tile shape (for tuning scripts)."""
    p = validate_backward(dy, x, weight, bias, z, mean, rstd, group_size, is_rms_norm, activation, output_mask)
    want_dx, want_dz, want_dw, want_db = requested_grads(output_mask, z, weight, bias)
    device = x.device
    # of x's shape, contiguous: the kernels write rows of N contiguous elements (empty_like: cheaper on the host
    # than torch.empty with a device argument)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if want_dx else None
    dz = torch.empty_like(x, dtype=z.dtype, memory_format=torch.contiguous_format) if want_dz else None
    dweight = dbias = None

    if p.rows > 0 and (want_dx or want_dz or want_dw or want_db):
        x2 = as_rows(x, p)
        z2 = as_rows(z, p) if z is not None else x2
        dy2 = as_rows(dy, p)
        mean, rstd = mean.contiguous(), rstd.contiguous()
        cfg = config or backward_config(p.group_size, p.rows)
        if cfg.block_tail and (cfg.wide or cfg.block_n + cfg.block_tail < p.group_size):
            raise ValueError(f"backward config {cfg}: a head and tail tile must hold the whole group of "
                             f"{p.group_size} columns")
        chunks_per_group = 1 if cfg.block_tail else cdiv(p.group_size, cfg.block_n)
        col_blocks = p.ngroups * chunks_per_group
        row_sums_given = cfg.wide and (want_dx or (want_dz and not norm_before_gate))
        row_sums = torch.empty((2, p.ngroups, p.rows), dtype=p.stat_dtype, device=device) if row_sums_given else None
        flags = kernel_flags(z is not None, weight is not None, norm_before_gate, is_rms_norm, activation,
                             p.stat_dtype)
        w = weight.contiguous() if weight is not None else x2  # x2: placeholder for absent tensors
        mean_arg = rstd if is_rms_norm else mean  # MEAN is never read for RMSNorm
        tensor_args = (x2, z2, w, bias.contiguous() if bias is not None else x2, dy2, mean_arg, rstd,
                       row_sums if row_sums_given else x2, dx if want_dx else x2, dz if want_dz else x2)
        int_args = (x2.stride(0), z2.stride(0), dy2.stride(0), p.rows, p.group_size, p.ngroups, chunks_per_group)
        kernel = _BWD_GENERIC if needs_generic_build(cfg.block_m, cfg.block_tail) else _BWD
        options = _launch_options(cfg, flags, bias is not None, want_dx, want_dz, want_dw, want_db, row_sums_given)
        with _device_guard(x):
            # The persistent grid: at most the programs that are resident at once (one wave; a partial second
            # wave would leave SMs idle), asked of the compiled kernel with the partials' dtype standing in for
            # the buffers its size decides; not asked when one program per SM already gives each row tile its own.
            row_tiles, sm_count = cdiv(p.rows, cfg.block_m), _sm_count(device)
            programs_per_sm = cfg.programs_per_sm
            if row_tiles * col_blocks > sm_count:
                placeholders = (p.stat_dtype if want_dw else x2, p.stat_dtype if want_db else x2)
                resident = kernel.resident_per_sm(device, (*tensor_args, *placeholders, *int_args), options)
                programs_per_sm = min(programs_per_sm, resident or programs_per_sm)
            row_programs = max(1, min(row_tiles, programs_per_sm * sm_count // col_blocks))
            dw_partial = torch.empty((row_programs, p.cols), dtype=p.stat_dtype, device=device) if want_dw else None
            db_partial = torch.empty((row_programs, p.cols), dtype=p.stat_dtype, device=device) if want_db else None
            if row_sums_given:
                _BWD_ROW_SUMS.launch(
                    device, p.rows * p.ngroups,
                    (x2, z2, w, dy2, mean_arg, rstd, row_sums, *int_args[:3], p.rows, p.group_size, p.ngroups),
                    (("BLOCK_N", cfg.block_n), *flags, ("num_warps", max(1, min(16, cfg.block_n // 256)))))
            kernel.launch(device, row_programs * col_blocks,
                          (*tensor_args, dw_partial if want_dw else x2, db_partial if want_db else x2, *int_args),
                          options)
            # Second stage of the affine gradients: a fixed-order sum of the per-program partials.
            if want_dw:
                dweight = _sum_partials(dw_partial, weight.dtype, device)
            if want_db:
                dbias = _sum_partials(db_partial, bias.dtype, device)
    if want_dw and dweight is None:  # no rows: the gradient of a sum over nothing
        dweight = torch.zeros(p.cols, dtype=weight.dtype, device=device)
    if want_db and dbias is None:
        dbias = torch.zeros(p.cols, dtype=bias.dtype, device=device)
    return dx, dz, dweight, dbias


def _sum_partials(partial: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sum of the partials' rows in ``dtype`` (deterministic either way); under the caller's device guard."""
    rows, cols = partial.shape
    if cols < SUM_KERNEL_MIN_COLUMNS:
        return partial.sum(0).to(dtype)
    out = torch.empty(cols, dtype=dtype, device=device)
    _SUM_PARTIALS.launch(device, cdiv(cols, SUM_PARTIALS_BLOCK_N), (partial, out, rows, cols), SUM_PARTIALS_OPTIONS)
    return out
