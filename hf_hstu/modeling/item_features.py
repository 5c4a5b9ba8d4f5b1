"""Categorical item features embedded beside the item id.

Each item has, per feature, up to `max_values` category codes (multi-valued: a film's genres). A feature's embedding
is the mean (or sum, `item_feature_pooling`) of its categories' embeddings, and an item's feature embedding the sum
over features; the model adds it to the item-id embedding (RecTools' `CatFeaturesItemNet` sums one-hot category
embeddings with the id embedding; the research code's `CategoricalEmbeddingModule` maps each item to one category).
The item -> category table is a persistent buffer, so a checkpoint carries it.
"""

import torch
from torch import nn

from .configuration_recommender import SequentialRecommenderConfig


class ItemFeatureEmbeddings(nn.Module):
    """Item ids -> (..., D) sum over features of the pooled embeddings of the item's categories (zero for padding
    and for an item without categories).

    Buffers: `feature_ids` (num_items + 1, S) category ids in one shared table (feature f's codes offset by the
    sizes of the features before it; 0 = no value), S = sum(`item_feature_max_values`); `trained_items`
    (num_items + 1,) bool, whether an item occurred in the training data (all True unless set).
    """

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__()
        self.vocab_sizes = list(config.item_feature_vocab_sizes)
        self.max_values = list(config.item_feature_max_values)
        self.pooling = config.item_feature_pooling
        self.embeddings = nn.Embedding(1 + sum(self.vocab_sizes), config.hidden_size, padding_idx=0)
        self.register_buffer("feature_ids", torch.zeros(config.num_items + 1, sum(self.max_values), dtype=torch.long))
        self.register_buffer("trained_items", torch.ones(config.num_items + 1, dtype=torch.bool))

    @torch.no_grad()
    def set_table(self, feature_codes: torch.Tensor, trained_items: torch.Tensor | None = None) -> None:
        """Store the item -> category table: `feature_codes` (num_items + 1, S) holds feature f's codes
        1..vocab_sizes[f] (0 = no value) in its `max_values[f]` columns; `trained_items` (num_items + 1,) bool."""
        codes = torch.as_tensor(feature_codes, dtype=torch.long, device=self.feature_ids.device)
        if tuple(codes.shape) != tuple(self.feature_ids.shape):
            raise ValueError(f"feature_codes must have shape {tuple(self.feature_ids.shape)}, got {tuple(codes.shape)}")
        offsets, start, offset = torch.zeros_like(codes[0]), 0, 0
        for f, (size, width) in enumerate(zip(self.vocab_sizes, self.max_values, strict=True)):
            block = codes[:, start : start + width]
            if ((block < 0) | (block > size)).any():
                item = int(torch.nonzero((block < 0) | (block > size))[0, 0])
                raise ValueError(f"feature {f} of item {item} has a code outside 0..{size}: {block[item].tolist()}")
            offsets[start : start + width] = offset
            start, offset = start + width, offset + size
        if (codes[0] != 0).any():
            raise ValueError("row 0 of feature_codes is the padding item and must be all zero")
        self.feature_ids.copy_(torch.where(codes > 0, codes + offsets, 0))
        if trained_items is not None:
            trained = torch.as_tensor(trained_items, dtype=torch.bool, device=self.trained_items.device)
            if tuple(trained.shape) != tuple(self.trained_items.shape):
                raise ValueError(
                    f"trained_items must have shape {tuple(self.trained_items.shape)}, got {tuple(trained.shape)}"
                )
            self.trained_items.copy_(trained)

    def forward(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., D) feature embeddings of `item_ids` (any shape), or (num_items + 1, D) of every item when None."""
        ids = self.feature_ids if item_ids is None else self.feature_ids[item_ids]  # (..., S)
        embedded = self.embeddings(ids)  # (..., S, D), zero at empty slots (padding_idx)
        present = (ids != 0).unsqueeze(-1).to(embedded.dtype)
        total, start = 0, 0
        for width in self.max_values:
            pooled = embedded[..., start : start + width, :].sum(-2)
            if self.pooling == "mean":
                pooled = pooled / present[..., start : start + width, :].sum(-2).clamp(min=1)
            total, start = total + pooled, start + width
        return total
