"""Input preprocessors: turn item embeddings (and ratings) into the token sequence a model body reads.

Every preprocessor maps right-padded event tensors of width N to token tensors of width T (T = N, or 2N when items
and ratings are separate tokens) and back with `readout`, so that the model bodies never know which one is used.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_recommender import SequentialRecommenderConfig
from .similarity import l2_normalize


class LearnablePositionalInputPreprocessor(nn.Module):
    """x = item_embedding * sqrt(D) + position_embedding, then dropout and zeros at padding."""

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__()
        self.embedding_scale = math.sqrt(config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_tokens, config.hidden_size)
        self.dropout = nn.Dropout(config.input_dropout)

    def _embed_tokens(
        self, token_embeddings: torch.Tensor, token_mask: torch.Tensor, first_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, D) token embeddings -> scaled, positioned, dropped out, zero at padding. Row b's tokens are at
        positions `first_positions[b]` + 0..T - 1 of its sequence (0 when not given; a cache computes later ones)."""
        positions = torch.arange(token_embeddings.shape[1], device=token_embeddings.device)
        if first_positions is not None:
            positions = (first_positions.unsqueeze(1) + positions).clamp(
                max=self.position_embeddings.num_embeddings - 1
            )
        hidden_states = token_embeddings * self.embedding_scale + self.position_embeddings(positions)
        return self.dropout(hidden_states) * token_mask.unsqueeze(-1)

    def forward(
        self,
        item_embeddings: torch.Tensor,
        attention_mask: torch.Tensor,
        timestamps: torch.Tensor,
        ratings: torch.Tensor | None = None,
        first_events: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) item embeddings -> (tokens (B, T, D), token mask (B, T) bool, token timestamps (B, T)). The
        events of row b are events `first_events[b]` + 0..N - 1 of its sequence (0 when not given)."""
        return self._embed_tokens(item_embeddings, attention_mask, first_events), attention_mask, timestamps

    def readout(self, token_states: torch.Tensor) -> torch.Tensor:
        """(B, T, D) token outputs -> (B, N, D): the output of each event that predicts the next item. It is always
        the event's last token's (so the last event's is the last real token's, all `encode_last` computes)."""
        return token_states


class RatedInputPreprocessor(LearnablePositionalInputPreprocessor):
    """Concatenates a rating embedding to each item embedding and projects the pair back to D."""

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__(config)
        self.rating_embeddings = nn.Embedding(config.num_ratings + 1, config.rating_embedding_dim)
        self.rating_proj = nn.Linear(config.hidden_size + config.rating_embedding_dim, config.hidden_size, bias=False)

    def forward(self, item_embeddings, attention_mask, timestamps, ratings=None, first_events=None):
        rated_items = self.rating_proj(torch.cat([item_embeddings, self.rating_embeddings(ratings)], dim=-1))
        return self._embed_tokens(rated_items, attention_mask, first_events), attention_mask, timestamps


class CombinedItemRatingInputPreprocessor(LearnablePositionalInputPreprocessor):
    """Items and ratings as separate tokens [item_1, rating_1, item_2, rating_2, ...] (twice the length).

    The rating token of event i has seen item i and its rating, so its output predicts item i + 1.
    """

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__(config)
        self.rating_embeddings = nn.Embedding(config.num_ratings + 1, config.hidden_size)

    def forward(self, item_embeddings, attention_mask, timestamps, ratings=None, first_events=None):
        batch_size, num_events, hidden_size = item_embeddings.shape
        interleaved = torch.stack([item_embeddings, self.rating_embeddings(ratings)], dim=2)  # (B, N, 2, D)
        token_embeddings = interleaved.reshape(batch_size, 2 * num_events, hidden_size)
        token_mask = attention_mask.repeat_interleave(2, dim=1)
        token_timestamps = timestamps.repeat_interleave(2, dim=1)
        first_positions = None if first_events is None else 2 * first_events
        return self._embed_tokens(token_embeddings, token_mask, first_positions), token_mask, token_timestamps

    def readout(self, token_states: torch.Tensor) -> torch.Tensor:
        return token_states[:, 1::2]


INPUT_PREPROCESSORS: dict[str, type[LearnablePositionalInputPreprocessor]] = {
    "learnable_positional": LearnablePositionalInputPreprocessor,
    "rated": RatedInputPreprocessor,
    "combined_item_rating": CombinedItemRatingInputPreprocessor,
}


class L2NormOutputPostprocessor(nn.Module):
    """Unit-length output embeddings (eps 1e-6), so that dot products are cosines."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return l2_normalize(hidden_states)


class LayerNormOutputPostprocessor(nn.Module):
    """Affine-free layer norm of the output embeddings."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(hidden_states, (self.hidden_size,), eps=self.eps)


def build_output_postprocessor(config: SequentialRecommenderConfig) -> nn.Module:
    """The output postprocessor named by `config.output_postprocessor`."""
    if config.output_postprocessor == "layer_norm":
        return LayerNormOutputPostprocessor(config.hidden_size)
    return L2NormOutputPostprocessor()
