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
  ``s``; it accumulates dk and dv.
- ``_hstu_attn_bwd_dq``: a program owns a query block and loops over key blocks up to the causal bound, recomputing
  ``s``; it accumulates dq and the gradients of both bias tables (the kernel with the fewer accumulators).

No (N, N) tensor exists at any point: activations and gradients are O(T * H * d). Products take bf16/fp16 operands
(or fp32 ones, exact or TF32) and accumulate in fp32. Offsets of a sequence's first row are int64 (T * H * d may
pass 2^31), offsets within a sequence int32. Every autotune config compiles without register spills for sm_80 and
sm_90 (``scripts/triton_compile_report.py``).

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
    """Clears the buffers the dq kernel accumulates into before each launch: autotuning runs it once per config."""
    for name in ("DW_P", "DW_T_PARTIAL"):
        if kwargs[name] is not None:
            kwargs[name].zero_()


# Autotuning candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) per (kernel, precision, head size): "half" for
# bf16 and fp16 inputs (tensor cores), "fp32" for fp32 inputs (exact products run on the FMA units, whose operands
# take many more registers: smaller tiles; TF32 products use the same candidates); head sizes, the larger of d_qk and
# d_v rounded up to a power of 2, up to 64 or up to 128 (larger heads get the 128 candidates, unchecked). Each of
# them compiles without register spills for sm_80 and sm_90 with every bias combination (checked by
# tests/test_triton_compile.py with scripts/triton_compile_report.py), which bounds the tiles more than speed does.
_BLOCK_SIZES = {
    ("fwd", "half", 64): [
        (32, 32, 4, 2),
        (64, 32, 4, 3),
        (64, 64, 4, 3),
        (64, 64, 8, 3),
        (128, 32, 8, 3),
        (128, 64, 8, 3),
    ],
    ("fwd", "fp32", 64): [(16, 16, 4, 2), (32, 16, 4, 2), (64, 16, 4, 2)],
    ("bwd_dkdv", "half", 64): [(16, 64, 4, 2), (32, 32, 4, 2), (16, 128, 8, 2)],
    ("bwd_dkdv", "fp32", 64): [(16, 16, 2, 2)],
    ("bwd_dq", "half", 64): [(64, 16, 4, 2), (64, 32, 8, 3), (128, 16, 8, 2), (128, 32, 8, 2)],
    ("bwd_dq", "fp32", 64): [(16, 16, 2, 1), (16, 16, 2, 2)],
    ("fwd", "half", 128): [(64, 16, 4, 3), (64, 64, 8, 3)],
    ("fwd", "fp32", 128): [(16, 16, 4, 2), (64, 16, 4, 2)],
    ("bwd_dkdv", "half", 128): [(16, 32, 4, 2), (32, 32, 4, 2), (16, 64, 8, 2), (32, 64, 8, 2)],
    ("bwd_dkdv", "fp32", 128): [(16, 16, 4, 1), (16, 16, 4, 2)],
    ("bwd_dq", "half", 128): [(32, 32, 4, 2), (64, 16, 8, 2), (128, 16, 8, 2)],
    ("bwd_dq", "fp32", 128): [(16, 16, 4, 2), (16, 16, 8, 2)],
}
_MAX_BLOCK = max(max(sizes[:2]) for candidates in _BLOCK_SIZES.values() for sizes in candidates)


def autotune_configs(kernel: str, dtype: torch.dtype | str, head_dim: int = 64) -> list[triton.Config]:
    """The autotuning candidates of kernel "fwd", "bwd_dkdv" or "bwd_dq" for inputs of `dtype` (a torch dtype or
    "fp32", "tf32" (fp32 inputs, TF32 products), "bf16", "fp16") and heads of `head_dim` (the larger of d_qk and
    d_v); one small config in the interpreter."""
    precision = "fp32" if dtype in (torch.float32, "fp32", "tf32") else "half"
    block_sizes = [(16, 16, 4, 1)] if INTERPRET else _BLOCK_SIZES[kernel, precision, 64 if head_dim <= 64 else 128]
    pre_hook = _zero_bias_gradients if kernel == "bwd_dq" else None
    return [
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages, pre_hook=pre_hook)
        for block_m, block_n, warps, stages in block_sizes
    ]


def _config_key(config: triton.Config) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a config."""
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


def _autotuning(kernel: str) -> dict:
    """triton.autotune arguments of one kernel: the candidates of every dtype and head size, pruned at the first
    launch of each autotuning key to those of its inputs."""
    configs = {
        _config_key(config): config
        for dtype in ("fp32", "bf16")
        for head_dim in (64, 128)
        for config in autotune_configs(kernel, dtype, head_dim)
    }

    def prune(candidates: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        arguments = {**named_args, **kwargs}  # the launches pass every argument by keyword
        head_dim = max(arguments["BLOCK_DQK"], arguments["BLOCK_DV"])
        allowed = {_config_key(config) for config in autotune_configs(kernel, arguments["Q"].dtype, head_dim)}
        return [config for config in candidates if _config_key(config) in allowed]

    return {
        "configs": list(configs.values()),
        "key": ["AUTOTUNE_MAX_SEQ_LEN", "DQK", "DV", "HAS_POSITION_BIAS", "HAS_TIME_BIAS", "INPUT_PRECISION"],
        "prune_configs_by": {"early_config_prune": prune},
    }


@triton.jit
def _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK: tl.constexpr, LAST_BLOCK_FIRST: tl.constexpr):
    """(batch, head, seq_start, seq_len, block start) of this program of a 1D grid in which the blocks of one
    (sequence, head) are consecutive. seq_start is int64, the rest int32. The causal loops are longest for the last
    query blocks and for the first key blocks: query-block kernels pass LAST_BLOCK_FIRST so that the longest loops
    start first."""
    num_blocks = tl.cdiv(max_seq_len, BLOCK)
    pid_bh = tl.program_id(0) // num_blocks
    block = tl.program_id(0) % num_blocks
    if LAST_BLOCK_FIRST:
        block = num_blocks - 1 - block
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    seq_start = tl.load(SEQ_OFFSETS + batch).to(tl.int64)
    seq_len = (tl.load(SEQ_OFFSETS + batch + 1) - seq_start).to(tl.int32)
    return batch, head, seq_start, seq_len, block * BLOCK


@triton.jit
def _head_offset(seq_start, stride_t, head, stride_h):
    """Offset of row 0 of one sequence's head in a jagged (T, H, d) tensor, in int64: T * H * d can pass 2^31.

    Rows within a sequence are then addressed with int32 offsets from there (checked by `hstu_attention_jagged`:
    max_seq_len * stride_t < 2^31), which keeps 64-bit arithmetic out of the per-element address computations.
    """
    return seq_start.to(tl.int64) * stride_t + head.to(tl.int64) * stride_h


@triton.jit
def _load_tile(base, start, offs_block, seq_len, stride_t, offs_d, size_d: tl.constexpr):
    """(BLOCK, BLOCK_D) rows start + offs_block of one head (`base` points at its row 0), zero beyond the sequence and
    beyond d."""
    offs_t = start + offs_block
    pointers = base + offs_t[:, None] * stride_t + offs_d[None, :]
    return tl.load(pointers, mask=(offs_t[:, None] < seq_len) & (offs_d[None, :] < size_d), other=0.0)


@triton.jit
def _time_buckets(query_ts, key_ts, num_buckets, bucket_divisor):
    """Bucket of each (query, key) pair from broadcastable integer timestamps, exactly as ``time_bucket_ids``.

    The gap is an exact integer (int32 when `hstu_attention_jagged` could rebase the timestamps to int32 without
    overflow, int64 otherwise) converted to float32 before the log, as the reference does.
    """
    gap = tl.maximum(tl.abs(query_ts - key_ts), 1)
    log_gap = tl.log(gap.to(tl.float32))
    return tl.minimum(tl.maximum(tl.floor(log_gap / bucket_divisor), 0.0), num_buckets).to(tl.int32)


@triton.jit
def _load_timestamps(TS, seq_start, offs, seq_len, HAS_TIME_BIAS: tl.constexpr):
    """Timestamps of positions `offs` of the sequence starting at row `seq_start` (zeros without the time bias)."""
    if HAS_TIME_BIAS:
        return tl.load((TS + seq_start) + offs, mask=offs < seq_len, other=0)
    else:
        return tl.zeros_like(offs)


@triton.jit
def _biased_scores(
    s,
    relative_positions,
    valid,
    query_ts,
    key_ts,
    W_P,
    W_T,
    max_len,
    num_buckets,
    bucket_divisor,
    HAS_POSITION_BIAS: tl.constexpr,
    HAS_TIME_BIAS: tl.constexpr,
):
    """The fp32 dot products ``s`` of one tile plus ``w_p[max_len - 1 + j - i]`` and ``w_t[bucket(t~_i - t_j)]``.

    ``relative_positions`` (j - i) has the shape of ``s``, ``valid`` marks its causal pairs of real tokens (the
    others may fall outside w_p: a masked load, which keeps the addresses an affine function of the positions),
    and ``query_ts`` and ``key_ts`` broadcast to it. Buckets are clamped, always in range: the time-bias gather
    needs no mask. Returns the biased scores and the time buckets (zeros without the time bias).
    """
    buckets = tl.zeros_like(relative_positions)
    if HAS_POSITION_BIAS:
        s += tl.load(W_P + (max_len - 1) + relative_positions, mask=valid, other=0.0).to(tl.float32)
    if HAS_TIME_BIAS:
        buckets = _time_buckets(query_ts, key_ts, num_buckets, bucket_divisor)
        s += tl.load(W_T + buckets).to(tl.float32)
    return s, buckets


@triton.jit
def _silu_and_grad(s):
    """SiLU(s) and SiLU'(s) = sig (1 + s (1 - sig)), in fp32."""
    sig = tl.sigmoid(s)
    return s * sig, sig * (1.0 + s * (1.0 - sig))


@triton.autotune(**_autotuning("fwd"))
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
    batch, head, seq_start, seq_len, start_m = _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK_M, True)
    if start_m >= seq_len:
        return
    Q += _head_offset(seq_start, stride_qt, head, stride_qh)
    K += _head_offset(seq_start, stride_kt, head, stride_kh)
    V += _head_offset(seq_start, stride_vt, head, stride_vh)
    OUT += _head_offset(seq_start, stride_ot, head, stride_oh)

    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions in the sequence
    offs_n_block = tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q, start_m, tl.arange(0, BLOCK_M), seq_len, stride_qt, offs_dqk, DQK)  # (BLOCK_M, BLOCK_DQK)
    query_ts = _load_timestamps(QUERY_TS, seq_start, offs_m, seq_len, HAS_TIME_BIAS)  # (BLOCK_M,)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    end_n = tl.minimum(start_m + BLOCK_M, seq_len)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + offs_n_block  # (BLOCK_N,) key positions
        k = _load_tile(K, start_n, offs_n_block, seq_len, stride_kt, offs_dqk, DQK)  # (BLOCK_N, BLOCK_DQK)
        v = _load_tile(V, start_n, offs_n_block, seq_len, stride_vt, offs_dv, DV)  # (BLOCK_N, BLOCK_DV)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # (BLOCK_M, BLOCK_N)
        key_ts = _load_timestamps(KEY_TS, seq_start, offs_n, seq_len, HAS_TIME_BIAS)  # (BLOCK_N,)
        relative_positions = offs_n[None, :] - offs_m[:, None]
        # causal, and a real query (then the key is real too, j <= i < seq_len)
        valid = (relative_positions <= 0) & (offs_m[:, None] < seq_len)
        s = _biased_scores(
            s,
            relative_positions,
            valid,
            query_ts[:, None],
            key_ts[None, :],
            W_P,
            W_T,
            max_len,
            num_buckets,
            bucket_divisor,
            HAS_POSITION_BIAS,
            HAS_TIME_BIAS,
        )[0]
        a = tl.where(valid, _silu_and_grad(s)[0] * scale, 0.0)
        acc = tl.dot(a.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
    tl.store(
        OUT + offs_m[:, None] * stride_ot + offs_dv[None, :],
        acc.to(OUT.dtype.element_ty),
        mask=(offs_m[:, None] < seq_len) & (offs_dv[None, :] < DV),
    )


@triton.autotune(**_autotuning("bwd_dkdv"))
@triton.jit
def _hstu_attn_bwd_dkdv(
    Q,
    K,
    V,
    DOUT,
    DK,
    DV_OUT,
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
    # dk and dv of one key block; the bias-table gradients are summed by the dq kernel.
    batch, head, seq_start, seq_len, start_n = _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK_N, False)
    if start_n >= seq_len:
        return
    k_offset = _head_offset(seq_start, stride_kt, head, stride_kh)
    v_offset = _head_offset(seq_start, stride_vt, head, stride_vh)
    Q += _head_offset(seq_start, stride_qt, head, stride_qh)
    DOUT += _head_offset(seq_start, stride_dot, head, stride_doh)

    offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions in the sequence
    offs_m_block = tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load_tile(K + k_offset, start_n, tl.arange(0, BLOCK_N), seq_len, stride_kt, offs_dqk, DQK)
    v = _load_tile(V + v_offset, start_n, tl.arange(0, BLOCK_N), seq_len, stride_vt, offs_dv, DV)
    key_ts = _load_timestamps(KEY_TS, seq_start, offs_n, seq_len, HAS_TIME_BIAS)  # (BLOCK_N,)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for start_m in range((start_n // BLOCK_M) * BLOCK_M, seq_len, BLOCK_M):
        offs_m = start_m + offs_m_block  # (BLOCK_M,) query positions
        q = _load_tile(Q, start_m, offs_m_block, seq_len, stride_qt, offs_dqk, DQK)  # (BLOCK_M, BLOCK_DQK)
        dout = _load_tile(DOUT, start_m, offs_m_block, seq_len, stride_dot, offs_dv, DV)  # (BLOCK_M, BLOCK_DV)
        # transposed tile: rows are keys j, columns queries i
        s = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_M)
        query_ts = _load_timestamps(QUERY_TS, seq_start, offs_m, seq_len, HAS_TIME_BIAS)  # (BLOCK_M,)
        relative_positions = offs_n[:, None] - offs_m[None, :]
        valid = (relative_positions <= 0) & (offs_m[None, :] < seq_len)
        s = _biased_scores(
            s,
            relative_positions,
            valid,
            query_ts[None, :],
            key_ts[:, None],
            W_P,
            W_T,
            max_len,
            num_buckets,
            bucket_divisor,
            HAS_POSITION_BIAS,
            HAS_TIME_BIAS,
        )[0]
        silu, silu_grad = _silu_and_grad(s)
        a = tl.where(valid, silu * scale, 0.0)
        dv = tl.dot(a.to(dout.dtype), dout, dv, input_precision=INPUT_PRECISION)
        da = tl.dot(v, tl.trans(dout), input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_M)
        ds = tl.where(valid, da * silu_grad * scale, 0.0)
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)

    mask_rows = offs_n[:, None] < seq_len
    dk_pointers = DK + k_offset + offs_n[:, None] * stride_kt + offs_dqk[None, :]
    tl.store(dk_pointers, dk.to(DK.dtype.element_ty), mask=mask_rows & (offs_dqk[None, :] < DQK))
    dv_pointers = DV_OUT + v_offset + offs_n[:, None] * stride_vt + offs_dv[None, :]
    tl.store(dv_pointers, dv.to(DV_OUT.dtype.element_ty), mask=mask_rows & (offs_dv[None, :] < DV))


@triton.autotune(**_autotuning("bwd_dq"))
@triton.jit
def _hstu_attn_bwd_dq(
    Q,
    K,
    V,
    DOUT,
    DQ,
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
    # dq of one query block, and the bias-table gradients: a table entry collects dS from every (b, h, i, j) mapped
    # to it.
    # - w_t (num_buckets + 1 entries): each program builds its histogram in registers and stores it to its own row
    #   DW_T_PARTIAL[program_id], summed afterwards by torch: deterministic.
    # - w_p (2 N_max - 1 entries): dS goes to DW_P[max_len - 1 + j - i] by fp32 atomic adds. Their order varies
    #   between runs, so dw_p is reproducible only up to fp32 rounding; every other gradient is deterministic.
    batch, head, seq_start, seq_len, start_m = _program_block(SEQ_OFFSETS, num_heads, max_seq_len, BLOCK_M, True)
    if start_m >= seq_len:
        return
    q_offset = _head_offset(seq_start, stride_qt, head, stride_qh)
    K += _head_offset(seq_start, stride_kt, head, stride_kh)
    V += _head_offset(seq_start, stride_vt, head, stride_vh)
    DOUT += _head_offset(seq_start, stride_dot, head, stride_doh)

    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions in the sequence
    offs_n_block = tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q + q_offset, start_m, tl.arange(0, BLOCK_M), seq_len, stride_qt, offs_dqk, DQK)
    dout = _load_tile(DOUT, start_m, tl.arange(0, BLOCK_M), seq_len, stride_dot, offs_dv, DV)  # (BLOCK_M, BLOCK_DV)
    query_ts = _load_timestamps(QUERY_TS, seq_start, offs_m, seq_len, HAS_TIME_BIAS)  # (BLOCK_M,)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    histogram = tl.zeros([BLOCK_BUCKETS], dtype=tl.float32)
    bins = tl.arange(0, BLOCK_BUCKETS)
    end_n = tl.minimum(start_m + BLOCK_M, seq_len)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + offs_n_block  # (BLOCK_N,) key positions
        k = _load_tile(K, start_n, offs_n_block, seq_len, stride_kt, offs_dqk, DQK)  # (BLOCK_N, BLOCK_DQK)
        v = _load_tile(V, start_n, offs_n_block, seq_len, stride_vt, offs_dv, DV)  # (BLOCK_N, BLOCK_DV)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # (BLOCK_M, BLOCK_N)
        key_ts = _load_timestamps(KEY_TS, seq_start, offs_n, seq_len, HAS_TIME_BIAS)  # (BLOCK_N,)
        relative_positions = offs_n[None, :] - offs_m[:, None]
        # causal, and a real query (then the key is real too, j <= i < seq_len)
        valid = (relative_positions <= 0) & (offs_m[:, None] < seq_len)
        s, buckets = _biased_scores(
            s,
            relative_positions,
            valid,
            query_ts[:, None],
            key_ts[None, :],
            W_P,
            W_T,
            max_len,
            num_buckets,
            bucket_divisor,
            HAS_POSITION_BIAS,
            HAS_TIME_BIAS,
        )
        da = tl.dot(dout, tl.trans(v), input_precision=INPUT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = tl.where(valid, da * _silu_and_grad(s)[1] * scale, 0.0)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)
        if HAS_POSITION_BIAS:
            tl.atomic_add(DW_P + (max_len - 1) + relative_positions, ds, mask=valid, sem="relaxed")
        if HAS_TIME_BIAS:
            # one pass per bucket present in the tile: a tile usually spans few buckets
            low = tl.min(tl.where(valid, buckets, num_buckets))
            high = tl.max(tl.where(valid, buckets, 0))
            for bucket in range(low, high + 1):
                histogram += tl.where(bins == bucket, tl.sum(tl.where(buckets == bucket, ds, 0.0)), 0.0)

    q_pointers = DQ + q_offset + offs_m[:, None] * stride_qt + offs_dqk[None, :]
    tl.store(q_pointers, dq.to(DQ.dtype.element_ty), mask=(offs_m[:, None] < seq_len) & (offs_dqk[None, :] < DQK))
    if HAS_TIME_BIAS:
        partial_row = DW_T_PARTIAL + tl.program_id(0).to(tl.int64) * (num_buckets + 1)
        tl.store(partial_row + bins, histogram, mask=bins <= num_buckets)


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
    input_precision: str,
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
        "INPUT_PRECISION": input_precision,
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
        input_precision: str,
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
            input_precision,
        )
        out = query.new_empty(query.shape[0], query.shape[1], value.shape[2])  # (T, H, d_v)
        num_sequences = seq_offsets.shape[0] - 1
        _hstu_attn_fwd[lambda meta: (triton.cdiv(max_seq_len, meta["BLOCK_M"]) * num_sequences * query.shape[1],)](
            OUT=out, stride_ot=out.stride(0), stride_oh=out.stride(1), **arguments
        )
        ctx.save_for_backward(
            query, key, value, seq_offsets, position_weights, time_weights, query_timestamps, key_timestamps
        )
        ctx.settings = (max_seq_len, normalization, num_buckets, bucket_divisor, input_precision)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, key, value, seq_offsets, position_weights, time_weights, query_timestamps, key_timestamps = (
            ctx.saved_tensors
        )
        max_seq_len, normalization, num_buckets, bucket_divisor, input_precision = ctx.settings
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
            input_precision,
        )
        grad_out = grad_out.contiguous()
        arguments.update(DOUT=grad_out, stride_dot=grad_out.stride(0), stride_doh=grad_out.stride(1))
        num_sequences, num_heads = seq_offsets.shape[0] - 1, query.shape[1]
        num_programs_bh = num_sequences * num_heads
        dq, dk, dv = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
        _hstu_attn_bwd_dkdv[lambda meta: (triton.cdiv(max_seq_len, meta["BLOCK_N"]) * num_programs_bh,)](
            DK=dk, DV_OUT=dv, **arguments
        )
        # fp32 bias-gradient buffers (zeroed again by the dq pre-hook before each autotuning run): dw_p, and one
        # row of time-bias partial sums per dq program, for the largest grid of the candidate configs
        dw_p = None if position_weights is None else query.new_zeros(position_weights.shape, dtype=torch.float32)
        min_block_m = min(config.kwargs["BLOCK_M"] for config in _hstu_attn_bwd_dq.configs)
        dw_t_partial = (
            None
            if time_weights is None
            else query.new_zeros(
                triton.cdiv(max_seq_len, min_block_m) * num_programs_bh, num_buckets + 1, dtype=torch.float32
            )
        )
        _hstu_attn_bwd_dq[lambda meta: (triton.cdiv(max_seq_len, meta["BLOCK_M"]) * num_programs_bh,)](
            DQ=dq,
            DW_P=dw_p,
            DW_T_PARTIAL=dw_t_partial,
            BLOCK_BUCKETS=triton.next_power_of_2(num_buckets + 1),
            **arguments,
        )
        grad_position = None if dw_p is None else dw_p.to(position_weights.dtype)
        grad_time = None if dw_t_partial is None else dw_t_partial.sum(0).to(time_weights.dtype)
        return dq, dk, dv, None, None, grad_position, grad_time, None, None, None, None, None, None


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
    allow_tf32: bool | None = None,
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
        allow_tf32: for float32 inputs, whether the kernels' matrix products may round their inputs to TF32 (tensor
            cores) rather than multiply in exact fp32; None follows ``torch.backends.cuda.matmul.allow_tf32`` at
            call time, as torch.matmul does. bfloat16 and float16 inputs always multiply on tensor cores, with fp32
            accumulation.

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
    num_heads, head_dim = query.shape[1], max(query.shape[2], value.shape[2])
    if (max_seq_len + _MAX_BLOCK) * num_heads * triton.next_power_of_2(head_dim) >= 2**31:
        raise ValueError(
            f"the kernels address the rows of one sequence with int32 offsets: max_seq_len = {max_seq_len} tokens of "
            f"{num_heads} heads of size {head_dim} is too many"
        )
    if position_weights is not None and (position_weights.shape[0] + 1) // 2 < max_seq_len:
        raise ValueError(
            f"position_weights has {position_weights.shape[0]} entries, which covers sequences of up to "
            f"{(position_weights.shape[0] + 1) // 2} tokens, but max_seq_len is {max_seq_len}"
        )
    lengths = seq_offsets.diff()
    malformed = (seq_offsets[0] != 0) | (seq_offsets[-1] != query.shape[0]) | (lengths < 0).any()
    checks = [malformed | (lengths > max_seq_len).any()]
    if time_weights is not None:
        if query_timestamps is None or key_timestamps is None:
            raise ValueError("the time bias needs query_timestamps and key_timestamps")
        if time_weights.shape[0] != num_buckets + 1:
            raise ValueError(f"time_weights must have num_buckets + 1 = {num_buckets + 1} entries")
        timestamps = torch.stack([query_timestamps.to(torch.int64), key_timestamps.to(torch.int64)])  # (2, T)
        origin = timestamps.amin() if timestamps.numel() else timestamps.new_zeros(())
        checks.append((timestamps.amax() - origin if timestamps.numel() else origin) < 2**31)
    bad_offsets, *timestamps_fit_int32 = torch.stack(checks).tolist()  # the one device sync of the checks
    if bad_offsets:
        raise ValueError(
            f"seq_offsets must rise from 0 to T = {query.shape[0]} by steps of at most max_seq_len = {max_seq_len}, "
            f"got {seq_offsets.tolist()}"
        )
    query_timestamps = key_timestamps = None
    if time_weights is not None:
        # The kernels take the exact integer gap of two timestamps. Relative to their minimum, timestamps spanning
        # less than 2^31 (68 years of seconds) fit int32, and so does every gap: the cheaper int32 kernels.
        if timestamps_fit_int32[0]:
            timestamps = (timestamps - origin).to(torch.int32)
        query_timestamps, key_timestamps = timestamps.contiguous()
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    # bf16/fp16 products are exact in fp32 anyway; fp32 inputs are rounded to TF32 only when allowed
    input_precision = "tf32" if allow_tf32 or query.dtype != torch.float32 else "ieee"
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
        input_precision,
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
