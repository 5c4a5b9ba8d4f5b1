"""Fused jagged Triton kernels for HSTU pointwise attention with relative position and time bias.

Computes exactly the function of the eager reference (``hstu_attention.py``), on jagged tensors: q, k (T, H, d_qk)
and v (T, H, d_v) hold the T tokens of the batch back to back, sequence ``b`` being rows
``seq_offsets[b]:seq_offsets[b + 1]``; no padding is ever materialised. For one sequence and head::

    s_ij = q_i . k_j + w_p[N_max - 1 + j - i] + w_t[bucket(t~_i - t_j)]     (j <= i)
    a_ij = SiLU(s_ij) / n
    out_i = sum_j a_ij v_j

Kernels (the layout follows the Triton tutorial "fused attention"), each with a 1D grid of one program per
(block, sequence, head):

- ``_hstu_attn_fwd``: a program owns a query block and loops over key blocks up to the causal bound, accumulating
  ``a @ v`` in fp32. There is no softmax, hence no running maximum and nothing saved but the inputs.
- ``_hstu_attn_bwd_dkdv``: a program owns a key block and loops over the query blocks at or after it, recomputing
  ``s``; it accumulates dk, dv and the gradients of both bias tables.
- ``_hstu_attn_bwd_dq``: a program owns a query block and loops over key blocks up to the causal bound, recomputing
  ``s``; it accumulates dq.

No (N, N) tensor exists at any point: activations and gradients are O(T * H * d).

Import this module (``import hf_hstu`` does) to register the ``"hstu_triton"`` attention backend with transformers.
On CPU tensors the kernels run only in the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is first
imported), for testing: the eager backend is much faster on a CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hstu_attention import HSTUAttentionContext, RelativeBias, RelativeBiasSpec, register_hstu_attention

# In a try block, which transformers' remote-code dependency check skips: a model loaded with trust_remote_code where
# triton is missing must not require it; the model file catches this ImportError and keeps the eager backend.
try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the hstu_triton attention backend needs triton (pip install triton)") from error

# Triton's own test switch: its jit decorators (here and in triton.language) wrap kernels for the interpreter when
# this is set as triton is imported, instead of compiling them for the GPU.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _zero_bias_gradients(kwargs: dict) -> None:
    """Clears the buffers the dkdv kernel accumulates into before each launch: autotuning runs it once per config."""
    for name in ("DW_P", "DW_T_PARTIAL"):
        if kwargs[name] is not None:
            kwargs[name].zero_()


def _configs(block_sizes: list[tuple[int, int, int, int]], pre_hook=None) -> list[triton.Config]:
    """Autotuning candidates from (BLOCK_M, BLOCK_N, num_warps, num_stages); one small config in the interpreter."""
    if INTERPRET:
        block_sizes = [(16, 16, 4, 1)]
    return [
        triton.Config(
            {"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages, pre_hook=pre_hook
        )
        for block_m, block_n, num_warps, num_stages in block_sizes
    ]


# dkdv needs BLOCK_M <= BLOCK_N (see the position-bias gradient); its smallest BLOCK_N, which divides the others
# (powers of 2), lays out the rows of the time-bias partials.
_FWD_CONFIGS = _configs([(64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)])
_BWD_DKDV_CONFIGS = _configs(
    [(32, 64, 4, 3), (32, 128, 8, 2), (64, 64, 4, 2), (64, 128, 8, 2)], pre_hook=_zero_bias_gradients
)
_BWD_DQ_CONFIGS = _configs([(64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 8, 3), (128, 64, 8, 2)])
_MIN_DKDV_BLOCK_N = min(config.kwargs["BLOCK_N"] for config in _BWD_DKDV_CONFIGS)
_AUTOTUNE_KEY = ["AUTOTUNE_MAX_SEQ_LEN", "DQK", "DV", "HAS_POSITION_BIAS", "HAS_TIME_BIAS"]


@triton.jit
def _load_rows(base, seq_start, offs_t, mask_t, stride_t, head_offset, offs_d, size_d: tl.constexpr):
    """Rows `offs_t` of one head of a jagged (T, H, d) tensor, zero beyond the sequence and beyond d."""
    pointers = base + (seq_start + offs_t[:, None]) * stride_t + head_offset + offs_d[None, :]
    return tl.load(pointers, mask=mask_t[:, None] & (offs_d[None, :] < size_d), other=0.0)


@triton.jit
def _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK: tl.constexpr, LAST_BLOCK_FIRST: tl.constexpr):
    """(batch, head, seq_start, seq_len, block start) of this program of a 1D grid in which the blocks of one
    (sequence, head) are consecutive. The causal loops are longest for the last query blocks and for the first key
    blocks: query-block kernels pass LAST_BLOCK_FIRST so that the longest loops start first."""
    num_blocks = tl.cdiv(max_seq_len, BLOCK)
    pid_bh = tl.program_id(0) // num_blocks
    block = tl.program_id(0) % num_blocks
    if LAST_BLOCK_FIRST:
        block = num_blocks - 1 - block
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    seq_start = tl.load(SEQ_OFFSETS + batch)
    seq_len = (tl.load(SEQ_OFFSETS + batch + 1) - seq_start).to(tl.int32)
    return batch, head, seq_start, seq_len, block * BLOCK


@triton.jit
def _time_buckets(query_ts, key_ts, num_buckets, bucket_divisor):
    """Bucket of each (query, key) pair from broadcastable int64 timestamps, exactly as ``time_bucket_ids``.

    The gap is taken in int64 so that unix-second timestamps keep full precision before the float32 log.
    """
    gap = tl.maximum(tl.abs(query_ts - key_ts), 1)
    log_gap = tl.log(gap.to(tl.float32))
    return tl.minimum(tl.maximum(tl.floor(log_gap / bucket_divisor), 0.0), num_buckets).to(tl.int32)


@triton.jit
def _scores(
    s,
    offs_q,
    offs_k,
    mask,
    seq_start,
    seq_len,
    QUERY_TS,
    KEY_TS,
    W_P,
    W_T,
    max_len,
    num_buckets,
    bucket_divisor,
    HAS_POSITION_BIAS: tl.constexpr,
    HAS_TIME_BIAS: tl.constexpr,
):
    """Adds the relative bias to the fp32 dot products ``s`` of one tile.

    ``offs_q`` and ``offs_k`` are the query and key positions as a column and a row (or a row and a column) that
    broadcast to the shape of ``s``; ``mask`` marks the causal pairs of real tokens. Returns the biased scores and
    the time buckets (zeros when the time bias is off).
    """
    buckets = tl.zeros_like(s).to(tl.int32)
    if HAS_POSITION_BIAS:
        s += tl.load(W_P + (max_len - 1 + offs_k - offs_q), mask=mask, other=0.0).to(tl.float32)
    if HAS_TIME_BIAS:
        query_ts = tl.load(QUERY_TS + seq_start + offs_q, mask=offs_q < seq_len, other=0)
        key_ts = tl.load(KEY_TS + seq_start + offs_k, mask=offs_k < seq_len, other=0)
        buckets = _time_buckets(query_ts, key_ts, num_buckets, bucket_divisor)
        s += tl.load(W_T + buckets, mask=mask, other=0.0).to(tl.float32)
    return s, buckets


@triton.autotune(configs=_FWD_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _hstu_attn_fwd(
    Q,
    K,
    V,
    OUT,
    SEQ_OFFSETS,
    QUERY_TS,
    KEY_TS,
    W_P,
    W_T,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    num_heads,
    max_seq_len,
    scale,
    max_len,
    num_buckets,
    bucket_divisor,
    AUTOTUNE_MAX_SEQ_LEN,
    DQK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    HAS_POSITION_BIAS: tl.constexpr,
    HAS_TIME_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    _, head, seq_start, seq_len, start_m = _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK_M, True)
    if start_m >= seq_len:
        return

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n_block = tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < seq_len
    q = _load_rows(Q, seq_start, offs_m, mask_m, stride_qt, head * stride_qh, offs_dqk, DQK)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    end_n = tl.minimum(start_m + BLOCK_M, seq_len)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + offs_n_block
        mask_n = offs_n < seq_len
        k = _load_rows(K, seq_start, offs_n, mask_n, stride_kt, head * stride_kh, offs_dqk, DQK)
        v = _load_rows(V, seq_start, offs_n, mask_n, stride_vt, head * stride_vh, offs_dv, DV)
        # causal, and a real query (then the key is real too, j <= i < seq_len)
        valid = (offs_n[None, :] <= offs_m[:, None]) & mask_m[:, None]  # (BLOCK_M, BLOCK_N)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
        s, _ = _scores(
            s,
            offs_m[:, None],
            offs_n[None, :],
            valid,
            seq_start,
            seq_len,
            QUERY_TS,
            KEY_TS,
            W_P,
            W_T,
            max_len,
            num_buckets,
            bucket_divisor,
            HAS_POSITION_BIAS,
            HAS_TIME_BIAS,
        )
        a = tl.where(valid, s * tl.sigmoid(s) * scale, 0.0)
        acc = tl.dot(a.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
    tl.store(
        OUT + (seq_start + offs_m[:, None]) * stride_ot + head * stride_oh + offs_dv[None, :],
        acc.to(OUT.dtype.element_ty),
        mask=mask_m[:, None] & (offs_dv[None, :] < DV),
    )


@triton.autotune(configs=_BWD_DKDV_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _hstu_attn_bwd_dkdv(
    Q,
    K,
    V,
    DOUT,
    DK,
    DV_OUT,
    DW_P,
    DW_T_PARTIAL,
    SEQ_OFFSETS,
    QUERY_TS,
    KEY_TS,
    W_P,
    W_T,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    num_heads,
    max_seq_len,
    scale,
    max_len,
    num_buckets,
    bucket_divisor,
    partial_rows_per_head,
    partial_block,
    AUTOTUNE_MAX_SEQ_LEN,
    DQK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_BUCKETS: tl.constexpr,
    HAS_POSITION_BIAS: tl.constexpr,
    HAS_TIME_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # Bias-table gradients: a table entry collects dS from every (b, h, i, j) mapped to it.
    # - w_t (num_buckets + 1 entries): each program builds its histogram in registers and writes it to its own row
    #   of DW_T_PARTIAL, summed afterwards by torch: deterministic. Row (seq_start + start_n) // partial_block + batch
    #   (per head) is unique as partial_block divides BLOCK_N, and there are T // partial_block + B + 1 of them.
    # - w_p (2 N_max - 1 entries): a program's relative positions span its whole sequence, too many to keep per
    #   program, so each tile sums dS along its diagonals in registers and adds those 2 * BLOCK_N sums to DW_P with
    #   fp32 atomics. The order of those additions varies between runs, so dw_p is reproducible only up to fp32
    #   rounding; every other gradient is deterministic.
    tl.static_assert(BLOCK_M <= BLOCK_N)
    batch, head, seq_start, seq_len, start_n = _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK_N, False)
    if start_n >= seq_len:
        return

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m_block = tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_n = offs_n < seq_len
    mask_kqk = mask_n[:, None] & (offs_dqk[None, :] < DQK)
    mask_kv = mask_n[:, None] & (offs_dv[None, :] < DV)
    k_offsets = (seq_start + offs_n[:, None]) * stride_kt + head * stride_kh + offs_dqk[None, :]
    v_offsets = (seq_start + offs_n[:, None]) * stride_vt + head * stride_vh + offs_dv[None, :]
    k = tl.load(K + k_offsets, mask=mask_kqk, other=0.0)
    v = tl.load(V + v_offsets, mask=mask_kv, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    histogram = tl.zeros([BLOCK_BUCKETS], dtype=tl.float32)
    bins = tl.arange(0, BLOCK_BUCKETS)
    # Diagonal u = j - i - (start_n - start_m) + BLOCK_M - 1 (0 <= u < BLOCK_M + BLOCK_N - 1 <= 2 BLOCK_N) of a
    # (BLOCK_N, BLOCK_M) tile holds, in column c, row c + u - (BLOCK_M - 1): gathering those turns diagonals into rows.
    diagonals = tl.arange(0, 2 * BLOCK_N)
    diagonal_rows = diagonals[:, None] + tl.arange(0, BLOCK_M)[None, :] - (BLOCK_M - 1)  # (2 BLOCK_N, BLOCK_M)
    diagonal_mask = (diagonal_rows >= 0) & (diagonal_rows < BLOCK_N)
    diagonal_rows = tl.minimum(tl.maximum(diagonal_rows, 0), BLOCK_N - 1)

    for start_m in range((start_n // BLOCK_M) * BLOCK_M, seq_len, BLOCK_M):
        offs_m = start_m + offs_m_block
        mask_m = offs_m < seq_len
        q = _load_rows(Q, seq_start, offs_m, mask_m, stride_qt, head * stride_qh, offs_dqk, DQK)
        dout = _load_rows(DOUT, seq_start, offs_m, mask_m, stride_dot, head * stride_doh, offs_dv, DV)
        # transposed tile: rows are keys j, columns queries i
        valid = (offs_n[:, None] <= offs_m[None, :]) & mask_m[None, :]  # (BLOCK_N, BLOCK_M)
        s = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION)
        s, buckets = _scores(
            s,
            offs_m[None, :],
            offs_n[:, None],
            valid,
            seq_start,
            seq_len,
            QUERY_TS,
            KEY_TS,
            W_P,
            W_T,
            max_len,
            num_buckets,
            bucket_divisor,
            HAS_POSITION_BIAS,
            HAS_TIME_BIAS,
        )
        sig = tl.sigmoid(s)
        a = tl.where(valid, s * sig * scale, 0.0)
        dv = tl.dot(a.to(dout.dtype), dout, dv, input_precision=INPUT_PRECISION)
        da = tl.dot(v, tl.trans(dout), input_precision=INPUT_PRECISION)
        ds = tl.where(valid, da * sig * (1.0 + s * (1.0 - sig)) * scale, 0.0)  # SiLU'(s) = sig (1 + s (1 - sig))
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)
        if HAS_POSITION_BIAS:
            diagonal_sums = tl.sum(tl.where(diagonal_mask, tl.gather(ds, diagonal_rows, 0), 0.0), 1)
            positions = max_len - 1 + start_n - start_m - (BLOCK_M - 1) + diagonals
            tl.atomic_add(
                DW_P + positions,
                diagonal_sums,
                mask=(diagonals < BLOCK_M + BLOCK_N - 1) & (positions >= 0) & (positions < 2 * max_len - 1),
            )
        if HAS_TIME_BIAS:
            # one pass per bucket present in the tile: a tile usually spans few buckets
            low = tl.min(tl.where(valid, buckets, num_buckets))
            high = tl.max(tl.where(valid, buckets, 0))
            for bucket in range(low, high + 1):
                histogram += tl.where(bins == bucket, tl.sum(tl.where(buckets == bucket, ds, 0.0)), 0.0)

    tl.store(DK + k_offsets, dk.to(DK.dtype.element_ty), mask=mask_kqk)
    tl.store(DV_OUT + v_offsets, dv.to(DV_OUT.dtype.element_ty), mask=mask_kv)
    if HAS_TIME_BIAS:
        tl.store(
            DW_T_PARTIAL
            + (head * partial_rows_per_head + (seq_start + start_n) // partial_block + batch) * (num_buckets + 1)
            + bins,
            histogram,
            mask=bins <= num_buckets,
        )


@triton.autotune(configs=_BWD_DQ_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _hstu_attn_bwd_dq(
    Q,
    K,
    V,
    DOUT,
    DQ,
    SEQ_OFFSETS,
    QUERY_TS,
    KEY_TS,
    W_P,
    W_T,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    num_heads,
    max_seq_len,
    scale,
    max_len,
    num_buckets,
    bucket_divisor,
    AUTOTUNE_MAX_SEQ_LEN,
    DQK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    HAS_POSITION_BIAS: tl.constexpr,
    HAS_TIME_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    _, head, seq_start, seq_len, start_m = _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK_M, True)
    if start_m >= seq_len:
        return

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n_block = tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < seq_len
    mask_qqk = mask_m[:, None] & (offs_dqk[None, :] < DQK)
    q_offsets = (seq_start + offs_m[:, None]) * stride_qt + head * stride_qh + offs_dqk[None, :]
    q = tl.load(Q + q_offsets, mask=mask_qqk, other=0.0)
    dout = _load_rows(DOUT, seq_start, offs_m, mask_m, stride_dot, head * stride_doh, offs_dv, DV)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    end_n = tl.minimum(start_m + BLOCK_M, seq_len)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + offs_n_block
        mask_n = offs_n < seq_len
        k = _load_rows(K, seq_start, offs_n, mask_n, stride_kt, head * stride_kh, offs_dqk, DQK)
        v = _load_rows(V, seq_start, offs_n, mask_n, stride_vt, head * stride_vh, offs_dv, DV)
        valid = (offs_n[None, :] <= offs_m[:, None]) & mask_m[:, None]  # (BLOCK_M, BLOCK_N)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
        s, _ = _scores(
            s,
            offs_m[:, None],
            offs_n[None, :],
            valid,
            seq_start,
            seq_len,
            QUERY_TS,
            KEY_TS,
            W_P,
            W_T,
            max_len,
            num_buckets,
            bucket_divisor,
            HAS_POSITION_BIAS,
            HAS_TIME_BIAS,
        )
        sig = tl.sigmoid(s)
        da = tl.dot(dout, tl.trans(v), input_precision=INPUT_PRECISION)
        ds = tl.where(valid, da * sig * (1.0 + s * (1.0 - sig)) * scale, 0.0)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)
    tl.store(DQ + q_offsets, dq.to(DQ.dtype.element_ty), mask=mask_qqk)


def _kernel_arguments(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    position_weights: torch.Tensor | None,
    time_weights: torch.Tensor | None,
    query_timestamps: torch.Tensor | None,
    key_timestamps: torch.Tensor | None,
    normalization: float,
    num_buckets: int,
    bucket_divisor: float,
) -> dict:
    """The keyword arguments the three kernels share (inputs, strides, bias settings, head sizes)."""
    _, num_heads, dqk = query.shape
    dv = value.shape[2]
    return {
        "Q": query,
        "K": key,
        "V": value,
        "SEQ_OFFSETS": seq_offsets,
        "QUERY_TS": query_timestamps,
        "KEY_TS": key_timestamps,
        "W_P": position_weights,
        "W_T": time_weights,
        "stride_qt": query.stride(0),
        "stride_qh": query.stride(1),
        "stride_kt": key.stride(0),
        "stride_kh": key.stride(1),
        "stride_vt": value.stride(0),
        "stride_vh": value.stride(1),
        "num_heads": num_heads,
        "max_seq_len": max_seq_len,
        "scale": 1.0 / normalization,
        "max_len": 0 if position_weights is None else (position_weights.shape[0] + 1) // 2,
        "num_buckets": num_buckets,
        "bucket_divisor": bucket_divisor,
        "AUTOTUNE_MAX_SEQ_LEN": triton.next_power_of_2(max_seq_len),
        "DQK": dqk,
        "DV": dv,
        "BLOCK_DQK": max(triton.next_power_of_2(dqk), 16),  # tl.dot needs at least 16 along every dimension
        "BLOCK_DV": max(triton.next_power_of_2(dv), 16),
        "HAS_POSITION_BIAS": position_weights is not None,
        "HAS_TIME_BIAS": time_weights is not None,
        # fp32 inputs get exact fp32 products, like torch.matmul's default (no TF32)
        "INPUT_PRECISION": "ieee" if query.dtype == torch.float32 else "tf32",
    }


class HSTUAttentionFunction(torch.autograd.Function):
    """Autograd wrapper of the jagged kernels; see `hstu_attention_jagged` for the arguments."""

    @staticmethod
    def forward(
        ctx,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        seq_offsets: torch.Tensor,
        max_seq_len: int,
        position_weights: torch.Tensor | None,
        time_weights: torch.Tensor | None,
        query_timestamps: torch.Tensor | None,
        key_timestamps: torch.Tensor | None,
        normalization: float,
        num_buckets: int,
        bucket_divisor: float,
    ) -> torch.Tensor:
        arguments = _kernel_arguments(
            query,
            key,
            value,
            seq_offsets,
            max_seq_len,
            position_weights,
            time_weights,
            query_timestamps,
            key_timestamps,
            normalization,
            num_buckets,
            bucket_divisor,
        )
        out = query.new_empty(query.shape[0], query.shape[1], value.shape[2])  # (T, H, d_v)
        num_sequences = seq_offsets.shape[0] - 1
        _hstu_attn_fwd[lambda meta: (triton.cdiv(max_seq_len, meta["BLOCK_M"]) * num_sequences * query.shape[1],)](
            OUT=out, stride_ot=out.stride(0), stride_oh=out.stride(1), **arguments
        )
        ctx.save_for_backward(
            query, key, value, seq_offsets, position_weights, time_weights, query_timestamps, key_timestamps
        )
        ctx.settings = (max_seq_len, normalization, num_buckets, bucket_divisor)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, key, value, seq_offsets, position_weights, time_weights, query_timestamps, key_timestamps = (
            ctx.saved_tensors
        )
        max_seq_len, normalization, num_buckets, bucket_divisor = ctx.settings
        arguments = _kernel_arguments(
            query,
            key,
            value,
            seq_offsets,
            max_seq_len,
            position_weights,
            time_weights,
            query_timestamps,
            key_timestamps,
            normalization,
            num_buckets,
            bucket_divisor,
        )
        grad_out = grad_out.contiguous()
        arguments.update(DOUT=grad_out, stride_dot=grad_out.stride(0), stride_doh=grad_out.stride(1))
        num_sequences, num_heads = seq_offsets.shape[0] - 1, query.shape[1]
        num_programs_bh = num_sequences * num_heads
        dq, dk, dv = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
        # fp32 bias-gradient buffers (zeroed again by the dkdv pre-hook before each autotuning run)
        dw_p = None if position_weights is None else query.new_zeros(position_weights.shape, dtype=torch.float32)
        partial_rows_per_head = query.shape[0] // _MIN_DKDV_BLOCK_N + num_sequences + 1
        dw_t_partial = (
            None
            if time_weights is None
            else query.new_zeros(num_heads * partial_rows_per_head, num_buckets + 1, dtype=torch.float32)
        )
        _hstu_attn_bwd_dkdv[lambda meta: (triton.cdiv(max_seq_len, meta["BLOCK_N"]) * num_programs_bh,)](
            DK=dk,
            DV_OUT=dv,
            DW_P=dw_p,
            DW_T_PARTIAL=dw_t_partial,
            partial_rows_per_head=partial_rows_per_head,
            partial_block=_MIN_DKDV_BLOCK_N,
            BLOCK_BUCKETS=triton.next_power_of_2(num_buckets + 1),
            **arguments,
        )
        _hstu_attn_bwd_dq[lambda meta: (triton.cdiv(max_seq_len, meta["BLOCK_M"]) * num_programs_bh,)](
            DQ=dq, **arguments
        )
        grad_position = None if dw_p is None else dw_p.to(position_weights.dtype)
        grad_time = None if dw_t_partial is None else dw_t_partial.sum(0).to(time_weights.dtype)
        return dq, dk, dv, None, None, grad_position, grad_time, None, None, None, None, None


def hstu_attention_jagged(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    normalization: float,
    position_weights: torch.Tensor | None = None,
    time_weights: torch.Tensor | None = None,
    query_timestamps: torch.Tensor | None = None,
    key_timestamps: torch.Tensor | None = None,
    num_buckets: int = 128,
    bucket_divisor: float = 0.301,
) -> torch.Tensor:
    """HSTU attention on jagged tensors with the fused Triton kernels (differentiable).

    Args:
        query: (T, H, d_qk), the T tokens of all sequences back to back.
        key: (T, H, d_qk).
        value: (T, H, d_v).
        seq_offsets: (B + 1,) integer offsets; sequence ``b`` is rows ``seq_offsets[b]:seq_offsets[b + 1]``.
        max_seq_len: an upper bound of the sequence lengths (it sizes the launch grid).
        normalization: the fixed length ``n`` that divides SiLU(s).
        position_weights: (2 N_max - 1,) relative position bias weights, or None when that bias is off.
        time_weights: (num_buckets + 1,) time bias weights, or None when that bias is off.
        query_timestamps: (T,) int64 time of the event each query position predicts (needed with time bias).
        key_timestamps: (T,) int64 time of each key's event (needed with time bias).

    Returns:
        (T, H, d_v) attention output.
    """
    if not query.is_cuda and not INTERPRET:
        raise RuntimeError(
            f"the hstu_triton attention kernels run on CUDA tensors, got tensors on {query.device}; use "
            "attn_implementation='eager' there (or set TRITON_INTERPRET=1 before triton is first imported to run "
            "the kernels in the slow Triton interpreter)"
        )
    if query.dim() != 3 or key.shape != query.shape or value.dim() != 3 or value.shape[:2] != query.shape[:2]:
        raise ValueError(
            "expected query and key of shape (T, H, d_qk) and value of shape (T, H, d_v), got "
            f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not query.dtype == key.dtype == value.dtype:
        raise ValueError(
            f"query, key and value must share one dtype among float32, float16 and bfloat16, got {query.dtype}, "
            f"{key.dtype} and {value.dtype}"
        )
    if seq_offsets.dim() != 1 or seq_offsets.shape[0] < 2 or seq_offsets.dtype.is_floating_point:
        raise ValueError(f"seq_offsets must be a (B + 1,) integer tensor, got {seq_offsets.dtype} {seq_offsets.shape}")
    lengths = seq_offsets.diff()
    malformed = (seq_offsets[0] != 0) | (seq_offsets[-1] != query.shape[0]) | (lengths < 0).any()
    if (malformed | (lengths > max_seq_len).any()).item():  # the one device sync of the checks
        raise ValueError(
            f"seq_offsets must rise from 0 to T = {query.shape[0]} by steps of at most max_seq_len = {max_seq_len}, "
            f"got {seq_offsets.tolist()}"
        )
    if position_weights is not None and (position_weights.shape[0] + 1) // 2 < max_seq_len:
        raise ValueError(
            f"position_weights has {position_weights.shape[0]} entries, which covers sequences of up to "
            f"{(position_weights.shape[0] + 1) // 2} tokens, but max_seq_len is {max_seq_len}"
        )
    if time_weights is not None:
        if query_timestamps is None or key_timestamps is None:
            raise ValueError("the time bias needs query_timestamps and key_timestamps")
        if time_weights.shape[0] != num_buckets + 1:
            raise ValueError(f"time_weights must have num_buckets + 1 = {num_buckets + 1} entries")
        query_timestamps = query_timestamps.to(torch.int64).contiguous()
        key_timestamps = key_timestamps.to(torch.int64).contiguous()
    else:
        query_timestamps = key_timestamps = None
    return HSTUAttentionFunction.apply(
        query.contiguous(),
        key.contiguous(),
        value.contiguous(),
        seq_offsets.to(torch.int64).contiguous(),
        max_seq_len,
        None if position_weights is None else position_weights.contiguous(),
        None if time_weights is None else time_weights.contiguous(),
        query_timestamps,
        key_timestamps,
        float(normalization),
        num_buckets,
        float(bucket_divisor),
    )


@dataclass(frozen=True)
class JaggedAttentionContext(HSTUAttentionContext):
    """The "hstu_triton" backend's per-forward state: where the real tokens of the right-padded batch are, as the
    jagged layout the kernels read, computed once per forward pass for all layers."""

    token_indices: torch.Tensor | None = None  # (T,) rows of the flattened (B * N) positions that hold real tokens
    seq_offsets: torch.Tensor | None = None  # (B + 1,) int64: sequence b is jagged rows seq_offsets[b]:[b + 1]
    max_seq_len: int = 1  # the longest sequence (sizes the launch grid)
    jagged_key_timestamps: torch.Tensor | None = None  # (T,) int64, with the time bias
    jagged_query_timestamps: torch.Tensor | None = None  # (T,) int64, with the time bias

    @classmethod
    def unsupported_reason(cls, device: torch.device, attention_dropout: float) -> str | None:
        if attention_dropout > 0.0:
            return f"the Triton kernels have no attention dropout (attention_dropout={attention_dropout})"
        if device.type != "cuda" and not INTERPRET:
            return f"the Triton kernels run on CUDA tensors, these are on {device}"
        return None

    @classmethod
    def prepare(
        cls,
        backend: str,
        attention_mask: torch.Tensor,
        key_timestamps: torch.Tensor | None,
        query_timestamps: torch.Tensor | None,
        spec: RelativeBiasSpec,
    ) -> JaggedAttentionContext:
        token_mask = attention_mask.bool()
        seq_len = token_mask.shape[1]
        lengths = token_mask.sum(1)
        if not torch.equal(token_mask, torch.arange(seq_len, device=lengths.device) < lengths[:, None]):
            raise ValueError("the hstu_triton attention needs a right-padded attention_mask (real tokens first)")
        token_indices = token_mask.flatten().nonzero().squeeze(1)
        jagged_timestamps = {}
        if spec.use_time_bias:
            jagged_timestamps = {
                "jagged_key_timestamps": key_timestamps.flatten()[token_indices],
                "jagged_query_timestamps": query_timestamps.flatten()[token_indices],
            }
        return cls(
            backend=backend,
            attention_mask=token_mask,
            key_timestamps=key_timestamps,
            query_timestamps=query_timestamps,
            token_indices=token_indices,
            seq_offsets=F.pad(lengths.cumsum(0), (1, 0)),
            max_seq_len=max(int(lengths.max()), 1),
            **jagged_timestamps,
        )


def hstu_triton_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    context: JaggedAttentionContext,
    relative_bias: RelativeBias,
    normalization: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The "hstu_triton" attention backend: `hstu_attention_forward`'s signature and output, fused kernels inside.

    Gathers the real tokens of the right-padded (B, H, N, d) inputs into jagged tensors (the layout of `context`,
    a `JaggedAttentionContext`), runs `hstu_attention_jagged` and scatters the result back to (B, N, H, d_v), zeros
    at padding positions. The kernels have no attention dropout.
    """
    if dropout > 0.0:
        raise ValueError(
            f"the hstu_triton attention has no attention dropout (got dropout={dropout}); use "
            "attn_implementation='eager' to train with attention dropout"
        )
    if not isinstance(context, JaggedAttentionContext):
        raise TypeError(f"the hstu_triton attention needs a JaggedAttentionContext, got {type(context).__name__}")
    batch_size, _, seq_len, _ = query.shape
    spec = relative_bias.spec

    def to_jagged(padded: torch.Tensor) -> torch.Tensor:  # (B, H, N, d) -> (T, H, d)
        return padded.transpose(1, 2).flatten(0, 1)[context.token_indices]

    jagged_output = hstu_attention_jagged(
        to_jagged(query),
        to_jagged(key),
        to_jagged(value),
        context.seq_offsets,
        context.max_seq_len,
        normalization=normalization,
        position_weights=relative_bias.position_weights,
        time_weights=relative_bias.time_weights,
        query_timestamps=context.jagged_query_timestamps,
        key_timestamps=context.jagged_key_timestamps,
        num_buckets=spec.num_buckets,
        bucket_divisor=spec.bucket_divisor,
    )
    output = jagged_output.new_zeros(batch_size * seq_len, *jagged_output.shape[1:])
    output = output.index_copy(0, context.token_indices, jagged_output)
    return output.view(batch_size, seq_len, *jagged_output.shape[1:]), None


register_hstu_attention("hstu_triton", hstu_triton_attention_forward, JaggedAttentionContext)
