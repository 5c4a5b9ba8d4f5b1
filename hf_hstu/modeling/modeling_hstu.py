"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., "Actions Speak Louder than Words", ICML 2024),
following the research code's math (generative_recommenders/research/modeling/sequential/hstu.py)."""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .cache_recommender import CachedHSTUAttentionContext, SequentialRecommenderCache
from .configuration_hstu import HSTUConfig
from .hstu_attention import (
    AUTO_ATTENTION,
    HSTU_ATTENTION_CONTEXTS,
    HSTUAttentionContext,
    RelativeBias,
    RelativeBiasSpec,
    hstu_attention_forward,
    resolve_attention_backend,
)
from .modeling_recommender import (
    RecommendationOutput,
    SequentialRecommenderOutput,
    SequentialRecommenderPreTrainedModel,
    init_default_linear_bias,
    states_at,
)

logger = logging.get_logger(__name__)

with contextlib.suppress(ImportError):  # registers the "hstu_triton" attention backend where triton is installed
    from .triton_hstu_attention import hstu_triton_attention_forward  # noqa: F401


class HSTUAttention(nn.Module):
    """One HSTU layer: pointwise (SiLU) attention with relative bias, gated by u, with a residual connection.

    x̂ = LayerNorm(x); u, v, q, k = split(SiLU(x̂ W)); a = (SiLU(q kᵀ + rab) / n) v;
    y = x + Linear(Dropout(u * LayerNorm(a))).
    """

    def __init__(self, config: HSTUConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.attention_dim = config.attention_dim
        self.linear_dim = config.linear_dim
        self.eps = config.layer_norm_eps
        self.normalization = config.attention_normalization
        self.concat_ua = config.concat_ua
        self.uvqk_proj = nn.Linear(
            config.hidden_size, 2 * self.num_heads * (self.linear_dim + self.attention_dim), bias=False
        )
        self.relative_bias = RelativeBias(RelativeBiasSpec.from_config(config))
        gated_dim = self.num_heads * self.linear_dim * (3 if self.concat_ua else 1)
        self.o_proj = nn.Linear(gated_dim, config.hidden_size)
        self.dropout = nn.Dropout(config.linear_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: HSTUAttentionContext,
        cache: SequentialRecommenderCache | None = None,
        query_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) right-padded hidden states -> (B, T, D). With `cache` the T tokens are a block of
        the window (`CachedHSTUAttentionContext`): they attend to the window's cached keys and values too. With
        `query_positions` (B, P) the T tokens are the whole window but only those positions are computed, (B, P, D),
        attending to every token (`context` the `CachedHSTUAttentionContext` of that block)."""
        normed = F.layer_norm(hidden_states, (hidden_states.shape[-1],), eps=self.eps)
        value_dim = self.num_heads * self.linear_dim
        qk_dim = self.num_heads * self.attention_dim
        sizes = [value_dim, value_dim, qk_dim, qk_dim]
        if query_positions is None:
            u, value, query, key = F.silu(self.uvqk_proj(normed)).split(sizes, dim=-1)
        else:  # values and keys of every token, gates and queries of the given positions only
            weight_u, weight_v, weight_q, weight_k = self.uvqk_proj.weight.split(sizes)
            value_key = F.silu(F.linear(normed, torch.cat([weight_v, weight_k])))
            gate_query = F.silu(F.linear(states_at(normed, query_positions), torch.cat([weight_u, weight_q])))
            value, key = value_key.split([value_dim, qk_dim], dim=-1)
            u, query = gate_query.split([value_dim, qk_dim], dim=-1)
            hidden_states = states_at(hidden_states, query_positions)
        batch_size, seq_len, _ = hidden_states.shape
        query = query.view(batch_size, seq_len, self.num_heads, self.attention_dim).transpose(1, 2)
        key = key.view(batch_size, -1, self.num_heads, self.attention_dim).transpose(1, 2)
        value = value.view(batch_size, -1, self.num_heads, self.linear_dim).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, context.block)  # (B, H, window, d)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(context.backend, hstu_attention_forward)
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            context.attention_mask,
            context=context,
            relative_bias=self.relative_bias,
            normalization=self.normalization,
            dropout=self.config.attention_dropout if self.training else 0.0,
        )
        attn_output = F.layer_norm(attn_output.reshape(batch_size, seq_len, value_dim), (value_dim,), eps=self.eps)
        gated = torch.cat([u, attn_output, u * attn_output], dim=-1) if self.concat_ua else u * attn_output
        return hidden_states + self.o_proj(self.dropout(gated))


class HSTUDecoderLayer(GradientCheckpointingLayer):
    """An HSTU layer that keeps padding positions at zero (HSTU has no FFN and no final norm)."""

    def __init__(self, config: HSTUConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention = HSTUAttention(config, layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: HSTUAttentionContext,
        cache: SequentialRecommenderCache | None = None,
        query_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self.attention(hidden_states, context, cache, query_positions)
        return hidden_states * context.attention_mask.unsqueeze(-1)


class HSTUPreTrainedModel(SequentialRecommenderPreTrainedModel):
    config: HSTUConfig
    config_class = HSTUConfig
    _no_split_modules = ["HSTUDecoderLayer"]

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """Unless one is requested, "hstu_auto": each forward pass picks the backend from its tensors' device (see
        `resolve_attention_backend`), never from the machine, so a model loaded on a GPU machine also runs on the CPU.
        """
        if requested_attention in (None, AUTO_ATTENTION):
            return AUTO_ATTENTION
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The research code's `hstu.py` (see [`HSTUConfig`]); uvqk is the generic normal of linear layers."""
        super()._init_weights(module)
        if isinstance(module, RelativeBias):
            for weights in (module.position_weights, module.time_weights):
                if weights is not None:
                    init.normal_(weights, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, HSTUAttention):
            init.xavier_uniform_(module.o_proj.weight)
            init_default_linear_bias(module.o_proj)

    def _init_input_preprocessor(self, module: nn.Module) -> None:
        """HSTU's reset re-initialises every input-preprocessor matrix xavier-normal."""
        for parameter in module.parameters():
            init.xavier_normal_(parameter)


class HSTUModel(HSTUPreTrainedModel):
    """HSTU sequential recommender: item embeddings -> input preprocessor -> HSTU layers -> output postprocessor.

    Example:

    ```python
    >>> import torch
    >>> from hf_hstu import HSTUConfig, HSTUModel
    >>> model = HSTUModel(HSTUConfig(num_items=100, max_seq_len=20, hidden_size=16, attention_dim=8, linear_dim=8))
    >>> ids = torch.tensor([[3, 7, 9]]); ts = torch.tensor([[1000, 2000, 3000]])
    >>> model(input_ids=ids, timestamps=ts, labels=ids).loss.shape
    torch.Size([])
    >>> model.recommend(input_ids=ids, timestamps=ts, target_timestamps=torch.tensor([4000]), k=5).item_ids.shape
    torch.Size([1, 5])
    ```
    """

    def __init__(self, config: HSTUConfig) -> None:
        super().__init__(config)
        self.relative_bias_spec = RelativeBiasSpec.from_config(config)
        self.layers = nn.ModuleList([HSTUDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    @property
    def requires_timestamps(self) -> bool:
        return self.config.use_time_bias

    @property
    def requires_target_timestamps(self) -> bool:
        return self.config.use_time_bias

    def _encode_layers(self, layers, token_embeddings, token_mask, token_timestamps, query_timestamps) -> torch.Tensor:
        """(B, T, D) outputs of `layers` (the first layers of the model) on a right-padded batch."""
        attention_dropout = self.config.attention_dropout if self.training else 0.0
        backend = resolve_attention_backend(
            self.config._attn_implementation, token_embeddings.device, attention_dropout
        )
        context = HSTU_ATTENTION_CONTEXTS.get(backend, HSTUAttentionContext).prepare(
            backend, token_mask, token_timestamps, query_timestamps, self.relative_bias_spec
        )
        hidden_states = token_embeddings
        for layer in layers:
            hidden_states = layer(hidden_states, context)
        return hidden_states

    def encode(self, token_embeddings, token_mask, token_timestamps, query_timestamps) -> torch.Tensor:
        return self._encode_layers(self.layers, token_embeddings, token_mask, token_timestamps, query_timestamps)

    def encode_last(self, token_embeddings, token_mask, token_timestamps, query_timestamps, num_tokens):
        """The last layer computes each row's last token alone, with the eager reference (one query per row, against
        every key of the row: the cache's `CachedHSTUAttentionContext`); the layers before it are those of `encode`."""
        hidden_states = token_embeddings
        if len(self.layers) > 1:
            hidden_states = self._encode_layers(
                self.layers[:-1], token_embeddings, token_mask, token_timestamps, query_timestamps
            )
        block = self.last_token_block(num_tokens, token_embeddings.shape[1])
        context = CachedHSTUAttentionContext.prepare_block(
            block, token_timestamps, query_timestamps.gather(1, block.positions), self.relative_bias_spec
        )
        return self.layers[-1](hidden_states, context, query_positions=block.positions).squeeze(1)

    def encode_cached(self, token_embeddings, block, key_timestamps, query_timestamps, cache) -> torch.Tensor:
        backend = resolve_attention_backend(self.config._attn_implementation, token_embeddings.device)
        if backend != "eager":
            logger.warning_once(
                f"cache: the cached block attends with the eager reference, not '{backend}' (the fused "
                "kernels take square jagged blocks, not a few queries against a cached window)."
            )
        context = CachedHSTUAttentionContext.prepare_block(
            block, key_timestamps, query_timestamps, self.relative_bias_spec
        )
        hidden_states = token_embeddings
        for layer in self.layers:
            hidden_states = layer(hidden_states, context, cache=cache)
        return hidden_states


__all__ = ["HSTUModel", "HSTUPreTrainedModel", "RecommendationOutput", "SequentialRecommenderOutput"]
