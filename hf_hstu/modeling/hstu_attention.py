"""Exact PyTorch reference of HSTU pointwise attention with relative position and time bias.

This is the "eager" attention backend of :class:`~hf_hstu.HSTUModel`; the Triton backend
(``triton_hstu_attention.py``) computes the same function on jagged tensors.

For one sequence and head, query ``i`` and key ``j <= i`` (causal, diagonal included)::

    s_ij = q_i . k_j + w_p[N_max - 1 + j - i] + w_t[bucket(t~_i - t_j)]
    a_ij = SiLU(s_ij) / n
    out_i = sum_j a_ij v_j

with ``n`` a fixed normalisation length, ``t~_i`` the query time of position ``i`` (the time of the
event it predicts) and ``bucket(d) = clamp(floor(ln(max(|d|, 1)) / divisor), 0, num_buckets)``.
There is no ``1/sqrt(d)`` scaling and no softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def time_bucket_ids(
    query_timestamps: torch.Tensor,
    key_timestamps: torch.Tensor,
    num_buckets: int,
    bucket_divisor: float,
) -> torch.Tensor:
    """Log-scale bucket of every (query, key) time gap.

    Args:
        query_timestamps: (B, N) unix seconds of the event each query position predicts.
        key_timestamps: (B, N) unix seconds of each key position's event.

    Returns:
        (B, N, N) int64 bucket indices in ``[0, num_buckets]``; they carry no gradient.
    """
    gaps = query_timestamps.unsqueeze(2) - key_timestamps.unsqueeze(1)  # (B, N, N), exact in int64
    log_gaps = gaps.abs_().clamp_(min=1).to(torch.float32).log_()  # in place: N x N temporaries are the cost
    return log_gaps.div_(bucket_divisor).floor_().clamp_(0, num_buckets).long()


def relative_position_bias(position_weights: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(seq_len, seq_len) matrix ``w_p[N_max - 1 + j - i]`` from a (2 N_max - 1,) weight vector."""
    max_len = (position_weights.shape[0] + 1) // 2
    if seq_len > max_len:
        raise ValueError(f"sequences of {seq_len} tokens exceed the position bias table (max {max_len} tokens).")
    positions = torch.arange(seq_len, device=position_weights.device)
    return position_weights[max_len - 1 + positions.unsqueeze(0) - positions.unsqueeze(1)]


class RelativeBucketedTimeAndPositionBias(nn.Module):
    """Learned relative attention bias of one HSTU layer, shared by its heads.

    Holds ``position_weights`` (2 N_max - 1,) when the position part is on and ``time_weights``
    (num_buckets + 1,) when the time part is on; either can be off.
    """

    def __init__(self, max_len: int, num_buckets: int, use_position_bias: bool, use_time_bias: bool) -> None:
        super().__init__()
        self.max_len = max_len
        self.num_buckets = num_buckets
        self.position_weights = nn.Parameter(torch.empty(2 * max_len - 1)) if use_position_bias else None
        self.time_weights = nn.Parameter(torch.empty(num_buckets + 1)) if use_time_bias else None


def hstu_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    normalization: float,
    position_weights: torch.Tensor | None = None,
    time_weights: torch.Tensor | None = None,
    query_timestamps: torch.Tensor | None = None,
    key_timestamps: torch.Tensor | None = None,
    num_buckets: int = 128,
    bucket_divisor: float = 0.301,
    dropout: float = 0.0,
    bias_cache: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Reference HSTU attention on right-padded tensors (the "eager" backend).

    Args:
        module: the calling attention module (unused; part of the AttentionInterface signature).
        query: (B, H, N, d_qk).
        key: (B, H, N, d_qk).
        value: (B, H, N, d_v).
        attention_mask: (B, N) bool, True for real tokens; every row is right-padded (a prefix of True).
        normalization: the fixed length ``n`` that divides SiLU(s).
        position_weights: (2 N_max - 1,) relative position bias weights, or None when that bias is off.
        time_weights: (num_buckets + 1,) time bias weights, or None when that bias is off.
        query_timestamps: (B, N) int64 time of the event each query position predicts (needed with time bias).
        key_timestamps: (B, N) int64 time of each key's event (needed with time bias).
        dropout: dropout on the attention weights (training only).
        bias_cache: a dict shared by the layers of one forward pass; the time buckets and the mask are computed
            once and stored in it.

    Returns:
        ((B, N, H, d_v) attention output, None).
    """
    seq_len = query.shape[2]
    bias_cache = {} if bias_cache is None else bias_cache
    scores = torch.matmul(query, key.transpose(-1, -2))  # (B, H, N, N), a fresh tensor: biases are added in place
    if position_weights is not None:
        scores += relative_position_bias(position_weights, seq_len)
    if time_weights is not None:
        if query_timestamps is None or key_timestamps is None:
            raise ValueError("the time bias needs query_timestamps and key_timestamps")
        if time_weights.shape[0] != num_buckets + 1:
            raise ValueError(
                f"time_weights has {time_weights.shape[0]} entries, expected num_buckets + 1 = {num_buckets + 1}."
            )
        if "time_bucket_ids" not in bias_cache:
            bias_cache["time_bucket_ids"] = time_bucket_ids(
                query_timestamps, key_timestamps, num_buckets, bucket_divisor
            )
        buckets = bias_cache["time_bucket_ids"]  # (B, N, N)
        scores += time_weights.index_select(0, buckets.flatten()).view_as(buckets).unsqueeze(1)
    if "masked_out" not in bias_cache:  # (B, 1, N, N): keys after the query, and padded keys, contribute nothing
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=query.device).tril()
        bias_cache["masked_out"] = ~(causal & attention_mask[:, None, None, :].bool())
    weights = F.silu(scores).masked_fill_(bias_cache["masked_out"], 0.0)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout, training=True)
    attn_output = torch.matmul(weights, value) / normalization  # (B, H, N, d_v); dividing here is N/d times cheaper
    return attn_output.transpose(1, 2).contiguous(), None
