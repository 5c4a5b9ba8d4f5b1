"""HSTU attention: the relative bias, the per-forward attention context, the choice of backend, and the exact
PyTorch reference (the "eager" backend).

For one sequence and head, query ``i`` and key ``j <= i`` (causal, diagonal included)::

    s_ij = q_i . k_j + w_p[N_max - 1 + j - i] + w_t[bucket(t~_i - t_j)]
    a_ij = SiLU(s_ij) / n
    out_i = sum_j a_ij v_j

with ``n`` a fixed normalisation length, ``t~_i`` the query time of position ``i`` (the time of the event it predicts) and
``bucket(d) = clamp(floor(ln(max(|d|, 1)) / divisor), 0, num_buckets)`` (the research code's bucketing). There is no
``1/sqrt(d)`` scaling and no softmax.

The contract every backend follows:

- each layer owns a :class:`RelativeBias` (its weights ``w_p``, ``w_t``) whose :class:`RelativeBiasSpec` (table
  sizes, bucketing) is the same for all layers;
- ``encode`` resolves the backend once per forward from the tensors' device (:func:`resolve_attention_backend`) and
  prepares that backend's :class:`HSTUAttentionContext` once (the eager backend's mask and time buckets; the Triton
  backend's jagged offsets), like Llama's position embeddings computed once and passed to every layer;
- backends are registered with transformers' ``AttentionInterface`` (:func:`register_hstu_attention`) and share one
  signature: ``(module, query, key, value, attention_mask, *, context, relative_bias, normalization, dropout)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.utils import logging

logger = logging.get_logger(__name__)

# The attention implementation HSTU models get when none is requested: the fused kernels for CUDA tensors where
# triton is installed, the eager reference for any other tensors; decided per forward pass.
AUTO_ATTENTION = "hstu_auto"


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
        (B, N, N) int32 bucket indices in ``[0, num_buckets]``; they carry no gradient. int32 rather than int64: half
        the memory for the whole forward and backward, and the table gather and its gradient's scatter run about
        twice as fast on the CPU.
    """
    gaps = (query_timestamps.unsqueeze(2) - key_timestamps.unsqueeze(1)).to(torch.float32)  # exact in int64, rounded
    # In place on float32, fewest passes (N x N temporaries are the cost): rounding commutes with |.| and max(., 1),
    # and the log is >= 0 (the divisor > 0), so the cast to int32 (truncation) is the floor.
    return gaps.abs_().clamp_(min=1).log_().div_(bucket_divisor).clamp_(max=num_buckets).to(torch.int32)


def relative_position_bias(position_weights: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(seq_len, seq_len) matrix ``w_p[N_max - 1 + j - i]`` from a (2 N_max - 1,) weight vector."""
    max_len = (position_weights.shape[0] + 1) // 2
    if seq_len > max_len:
        raise ValueError(f"sequences of {seq_len} tokens exceed the position bias table (max {max_len} tokens).")
    positions = torch.arange(seq_len, device=position_weights.device)
    return position_weights[max_len - 1 + positions.unsqueeze(0) - positions.unsqueeze(1)]


def add_relative_bias(
    scores: torch.Tensor,
    context: HSTUAttentionContext,
    position_weights: torch.Tensor | None,
    time_weights: torch.Tensor | None,
) -> torch.Tensor:
    """Adds ``w_p[N_max - 1 + j - i] + w_t[bucket_ij]`` in place to (B, H, N, N) scores (each part when its weights
    are given; the buckets come from `context`) and returns them."""
    if position_weights is not None:
        scores += context.position_bias(position_weights, scores.shape[-1])  # (N, N)
    if time_weights is not None:
        buckets = context.time_buckets  # (B, N, N)
        scores += time_weights.index_select(0, buckets.flatten()).view_as(buckets).unsqueeze(1)
    return scores


@dataclass(frozen=True)
class RelativeBiasSpec:
    """What the relative bias of every layer of a model is: which parts are on, the table sizes, the bucketing."""

    max_len: int  # longest token sequence: the position table has 2 max_len - 1 entries
    num_buckets: int  # largest time bucket: the time table has num_buckets + 1 entries
    bucket_divisor: float  # bucket = floor(ln(max(|gap|, 1)) / bucket_divisor), clamped to [0, num_buckets]
    use_position_bias: bool
    use_time_bias: bool

    @classmethod
    def from_config(cls, config) -> RelativeBiasSpec:
        return cls(
            max_len=config.max_tokens,
            num_buckets=config.num_time_buckets,
            bucket_divisor=config.time_bucket_divisor,
            use_position_bias=config.use_position_bias,
            use_time_bias=config.use_time_bias,
        )

    def time_buckets(self, query_timestamps: torch.Tensor, key_timestamps: torch.Tensor) -> torch.Tensor:
        """(B, N, N) bucket of each (query, key) time gap; see `time_bucket_ids`."""
        return time_bucket_ids(query_timestamps, key_timestamps, self.num_buckets, self.bucket_divisor)


class RelativeBias(nn.Module):
    """Learned relative attention bias of one HSTU layer, shared by its heads.

    Holds ``position_weights`` (2 max_len - 1,) when the position part is on and ``time_weights`` (num_buckets + 1,)
    when the time part is on; either can be off (then the attribute is None).
    """

    def __init__(self, spec: RelativeBiasSpec) -> None:
        super().__init__()
        self.spec = spec
        self.position_weights = nn.Parameter(torch.empty(2 * spec.max_len - 1)) if spec.use_position_bias else None
        self.time_weights = nn.Parameter(torch.empty(spec.num_buckets + 1)) if spec.use_time_bias else None

    def forward(self, scores: torch.Tensor, context: HSTUAttentionContext) -> torch.Tensor:
        """Adds the bias in place to the (B, H, N, N) scores of the padded batch of `context`; returns them."""
        return add_relative_bias(scores, context, self.position_weights, self.time_weights)

    def extra_repr(self) -> str:
        return f"{self.spec}"


@dataclass(frozen=True)
class HSTUAttentionContext:
    """Per-forward state of HSTU attention, computed once in `encode` and handed to every layer and to the backend.

    This base class is the eager backend's context: the attention mask and, with the time bias, the time buckets of
    every (query, key) pair. A backend that needs other per-batch state subclasses it and specialises `prepare`.
    """

    backend: str  # the registered attention function the layers call
    attention_mask: torch.Tensor  # (B, N) bool, True for real tokens, right-padded
    key_timestamps: torch.Tensor | None  # (B, N) int64 time of each token's event
    query_timestamps: torch.Tensor | None  # (B, N) int64 time of the event each position predicts
    time_buckets: torch.Tensor | None = None  # (B, N, N) int32, with the time bias
    masked_out: torch.Tensor | None = None  # (B, 1, N, N) bool: pairs that contribute nothing (future or padding)

    @classmethod
    def unsupported_reason(cls, device: torch.device, attention_dropout: float) -> str | None:
        """Why this backend cannot run on tensors of `device` (with that attention dropout), or None if it can."""
        return None

    def position_bias(self, position_weights: torch.Tensor, seq_len: int) -> torch.Tensor:
        """The position bias added to the scores: (seq_len, seq_len) ``w_p[N_max - 1 + j - i]``; a context whose
        queries are not positions 0..N - 1 (the cache's) says where they are."""
        return relative_position_bias(position_weights, seq_len)

    @classmethod
    def prepare(
        cls,
        backend: str,
        attention_mask: torch.Tensor,
        key_timestamps: torch.Tensor | None,
        query_timestamps: torch.Tensor | None,
        spec: RelativeBiasSpec,
    ) -> HSTUAttentionContext:
        """The context of a right-padded batch for `backend`: (B, N) mask and (B, N) int64 timestamps (which may be
        None when `spec` has no time bias), with the per-batch state that backend needs."""
        seq_len = attention_mask.shape[1]
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=attention_mask.device).tril()
        return cls(
            backend=backend,
            attention_mask=attention_mask,
            key_timestamps=key_timestamps,
            query_timestamps=query_timestamps,
            time_buckets=spec.time_buckets(query_timestamps, key_timestamps) if spec.use_time_bias else None,
            masked_out=~(causal & attention_mask[:, None, None, :].bool()),
        )


def eager_hstu_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: HSTUAttentionContext,
    *,
    normalization: float,
    position_weights: torch.Tensor | None = None,
    time_weights: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """The reference computation on right-padded tensors, differentiable in q, k, v and both weight tables.

    Args:
        query: (B, H, N, d_qk).
        key: (B, H, N, d_qk).
        value: (B, H, N, d_v).
        context: the `HSTUAttentionContext` of the batch (its mask and, with the time bias, its time buckets).
        normalization: the fixed length ``n`` that divides SiLU(s).
        position_weights: (2 N_max - 1,) position bias table, or None when that part is off.
        time_weights: (num_buckets + 1,) time bias table, or None when that part is off.
        dropout: dropout on the attention weights (training only).

    Returns:
        (B, N, H, d_v) attention output.
    """
    scores = torch.matmul(query, key.transpose(-1, -2))  # (B, H, N, N), a fresh tensor: the bias is added in place
    scores = add_relative_bias(scores, context, position_weights, time_weights)
    weights = F.silu(scores).masked_fill_(context.masked_out, 0.0)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout, training=True)
    attn_output = torch.matmul(weights, value) / normalization  # (B, H, N, d_v); dividing here is N/d times cheaper
    return attn_output.transpose(1, 2).contiguous()


def hstu_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    context: HSTUAttentionContext,
    relative_bias: RelativeBias,
    normalization: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The "eager" backend: `eager_hstu_attention` with the layer's `RelativeBias`, in the backends' signature.

    Args:
        module: the calling attention module (unused; part of the AttentionInterface signature).
        query, key, value: (B, H, N, d) right-padded.
        attention_mask: (B, N) bool, True for real tokens (also in `context`).
        context: the forward pass's `HSTUAttentionContext`.
        relative_bias: the layer's `RelativeBias`.

    Returns:
        ((B, N, H, d_v) attention output, None).
    """
    output = eager_hstu_attention(
        query,
        key,
        value,
        context,
        normalization=normalization,
        position_weights=relative_bias.position_weights,
        time_weights=relative_bias.time_weights,
        dropout=dropout,
    )
    return output, None


# Backend name -> the context class that prepares its per-forward state and says where it runs.
HSTU_ATTENTION_CONTEXTS: dict[str, type[HSTUAttentionContext]] = {"eager": HSTUAttentionContext}


def register_hstu_attention(name: str, function, context_class: type[HSTUAttentionContext]) -> None:
    """Register an HSTU attention backend: its function with transformers' AttentionInterface (so that
    ``attn_implementation=name`` selects it) and the context class that prepares its per-forward state."""
    AttentionInterface.register(name, function)
    HSTU_ATTENTION_CONTEXTS[name] = context_class


def resolve_attention_backend(requested: str | None, device: torch.device, attention_dropout: float = 0.0) -> str:
    """The backend that runs a forward pass on tensors of `device`, from the requested ``attn_implementation``.

    ``"hstu_auto"`` (the default) takes the Triton kernels for CUDA tensors where triton is installed, the eager
    reference otherwise. A backend requested by name that cannot run on these tensors (the Triton kernels on CPU
    tensors, say) gives one warning and the eager reference: a model loaded on a GPU machine still runs on the CPU.
    """
    if requested in (None, AUTO_ATTENTION):
        triton_context = HSTU_ATTENTION_CONTEXTS.get("hstu_triton")
        if device.type == "cuda" and triton_context is not None:
            if triton_context.unsupported_reason(device, attention_dropout) is None:
                return "hstu_triton"
        return "eager"
    context_class = HSTU_ATTENTION_CONTEXTS.get(requested)
    if context_class is None:
        return requested  # a generic AttentionInterface function: the caller's choice
    reason = context_class.unsupported_reason(device, attention_dropout)
    if reason is not None:
        logger.warning_once(
            f"attn_implementation='{requested}' cannot run here ({reason}); using the eager reference instead. "
            "Move the model to a CUDA device, or select attn_implementation='eager' to silence this warning."
        )
        return "eager"
    return requested
