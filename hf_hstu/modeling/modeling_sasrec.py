"""SASRec (Kang & McAuley, ICDM 2018) as the HSTU paper's baseline, sharing embeddings, losses and retrieval with
HSTU."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .cache_recommender import CachedBlock, SequentialRecommenderCache
from .configuration_sasrec import SASRecConfig
from .modeling_recommender import (
    RecommendationOutput,
    SequentialRecommenderOutput,
    SequentialRecommenderPreTrainedModel,
    init_default_linear_bias,
    states_at,
)


class SASRecFeedForward(nn.Module):
    """FFN(z) = z + Dropout(W2 Dropout(act(W1 z))), act = `config.hidden_act` (ReLU or GELU)."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.act_fn = F.gelu if config.hidden_act == "gelu" else F.relu

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.dropout(self.down_proj(self.dropout(self.act_fn(self.up_proj(hidden_states)))))


class SASRecBlock(GradientCheckpointingLayer):
    """Q = LayerNorm(x); x = FFN(LayerNorm(Q + MHA(Q, x, x))) * mask, with causal softmax attention."""

    def __init__(self, config: SASRecConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.eps = config.layer_norm_eps
        self.self_attn = nn.MultiheadAttention(
            config.hidden_size, config.num_attention_heads, dropout=config.attention_dropout, batch_first=True
        )
        self.post_attention_layernorm = nn.LayerNorm(
            config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=config.post_attention_layernorm_affine
        )
        self.feed_forward = SASRecFeedForward(config)

    def block_attention(
        self,
        query: torch.Tensor,
        hidden_states: torch.Tensor,
        block: CachedBlock,
        cache: SequentialRecommenderCache | None = None,
    ) -> torch.Tensor:
        """`self_attn(query, x, x)` of a block of the window's tokens (B, P, D) against the whole window, computed
        from the module's own `in_proj_weight`. With `cache`, x are the block's tokens, whose keys and values are
        written into it; without, x (B, T, D) is the whole window."""
        attention = self.self_attn
        batch_size, block_len, _ = query.shape
        num_heads = attention.num_heads
        head_dim = self.hidden_size // num_heads
        biases = (None,) * 3 if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)
        projections = [
            F.linear(states, weight, bias).view(batch_size, -1, num_heads, head_dim).transpose(1, 2)
            for states, weight, bias in zip(
                (query, hidden_states, hidden_states), attention.in_proj_weight.chunk(3), biases, strict=True
            )
        ]
        key, value = projections[1:]
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, block)  # (B, H, window, d)
        attn_output = F.scaled_dot_product_attention(projections[0], key, value, attn_mask=~block.masked_out)
        return attention.out_proj(attn_output.transpose(1, 2).reshape(batch_size, block_len, self.hidden_size))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: SequentialRecommenderCache | None = None,
        block: CachedBlock | None = None,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). With `block`, only its P tokens are computed, (B, P, D) (`attention_mask` their
        (B, P) mask): with `cache` the T tokens are the block's (incremental inference), without it the whole
        window."""
        seq_len = hidden_states.shape[1]
        query = F.layer_norm(hidden_states, (self.hidden_size,), eps=self.eps)
        if block is not None:
            if cache is None:
                query = states_at(query, block.positions)
            attn_output = self.block_attention(query, hidden_states, block, cache)
        else:
            causal_block = torch.ones(seq_len, seq_len, dtype=torch.bool, device=hidden_states.device).triu(1)
            attn_output, _ = self.self_attn(
                query,
                hidden_states,
                hidden_states,
                attn_mask=causal_block,
                key_padding_mask=~attention_mask,
                need_weights=False,
            )
        hidden_states = self.feed_forward(self.post_attention_layernorm(query + attn_output))
        return hidden_states * attention_mask.unsqueeze(-1)


class SASRecPreTrainedModel(SequentialRecommenderPreTrainedModel):
    config: SASRecConfig
    config_class = SASRecConfig
    _no_split_modules = ["SASRecBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The research code's `sasrec.py` (see [`SASRecConfig`]): xavier-normal matrices in the blocks."""
        super()._init_weights(module)
        if isinstance(module, nn.MultiheadAttention):
            init.xavier_normal_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.xavier_normal_(module.out_proj.weight)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, SASRecFeedForward):
            for projection in (module.up_proj, module.down_proj):
                init.xavier_normal_(projection.weight)
                init_default_linear_bias(projection)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            init.ones_(module.weight)
            init.zeros_(module.bias)


class SASRecModel(SASRecPreTrainedModel):
    """SASRec sequential recommender with the same inputs, outputs, losses and `recommend` as [`HSTUModel`]."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList([SASRecBlock(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    def encode(self, token_embeddings, token_mask, token_timestamps, query_timestamps) -> torch.Tensor:
        hidden_states = token_embeddings
        for layer in self.layers:
            hidden_states = layer(hidden_states, token_mask)
        return hidden_states

    def encode_last(self, token_embeddings, token_mask, token_timestamps, query_timestamps, num_tokens):
        """The last block computes each row's last token alone (its query against every key of the row)."""
        hidden_states = token_embeddings
        for layer in self.layers[:-1]:
            hidden_states = layer(hidden_states, token_mask)
        block = self.last_token_block(num_tokens, token_embeddings.shape[1])
        return self.layers[-1](hidden_states, block.mask, block=block).squeeze(1)

    def encode_cached(self, token_embeddings, block, key_timestamps, query_timestamps, cache) -> torch.Tensor:
        hidden_states = token_embeddings
        for layer in self.layers:
            hidden_states = layer(hidden_states, block.mask, cache=cache, block=block)
        return hidden_states


__all__ = ["SASRecModel", "SASRecPreTrainedModel", "RecommendationOutput", "SequentialRecommenderOutput"]
