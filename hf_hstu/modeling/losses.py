"""Training objectives for next-item prediction with sampled negatives, and the negative samplers."""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_recommender import SequentialRecommenderConfig
from .similarity import Similarity


def supervised_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) positions of each history that are trained to predict its next event: its length - 1 (0 when empty)."""
    return (attention_mask.sum(1) - 1).clamp(min=0)


def negatives_per_position(config: SequentialRecommenderConfig) -> int:
    """Negatives scored per supervised position: one for BCE (as the research code), `num_negatives` otherwise."""
    return 1 if config.loss == "bce" else config.num_negatives


def sample_negatives(
    positive_ids: torch.Tensor,
    num_negatives: int,
    num_items: int,
    strategy: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Negative item ids for each positive.

    Args:
        positive_ids: (P,) the target item of every supervised position.
        num_negatives: R negatives per position.
        num_items: catalogue size; uniform negatives are drawn from 1..num_items.
        strategy: "uniform" over the catalogue, or "in_batch": drawn uniformly from the distinct positives of this
            batch (deduplicated as the research code's in-batch sampler, so popular items are not drawn more often).
        generator: random generator (the global one when None).

    Returns:
        (P, R) int64 item ids. A negative may equal its positive; the losses mask those out.
    """
    shape = (positive_ids.shape[0], num_negatives)
    if strategy == "in_batch":
        distinct = positive_ids.unique()
        picks = torch.randint(0, distinct.shape[0], shape, generator=generator, device=positive_ids.device)
        return distinct[picks]
    return torch.randint(1, num_items + 1, shape, generator=generator, device=positive_ids.device)


class NegativeSamplingLoss(nn.Module):
    """Scores each supervised position's positive and its sampled negatives; subclasses turn that into a loss."""

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__()
        self.num_negatives = negatives_per_position(config)
        self.num_items = config.num_items
        self.negative_sampling = config.negative_sampling
        self.temperature = config.temperature

    def candidate_logits(
        self,
        user_embeddings: torch.Tensor,
        positive_ids: torch.Tensor,
        item_table: torch.Tensor,
        similarity: Similarity,
        negative_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (P, 1 + R) of [positive, negatives] / temperature, and the (P, R) mask of negatives equal to
        their positive (false negatives). `item_table` is `similarity.item_table(item_weight)`; negatives are sampled
        unless `negative_ids` (P, R) are given."""
        if negative_ids is None:
            negative_ids = sample_negatives(positive_ids, self.num_negatives, self.num_items, self.negative_sampling)
        candidate_ids = torch.cat([positive_ids.unsqueeze(1), negative_ids], dim=1)
        logits = similarity.score_candidates(user_embeddings, item_table, candidate_ids) / self.temperature
        return logits, negative_ids == positive_ids.unsqueeze(1)


class SampledSoftmaxLoss(NegativeSamplingLoss):
    """Cross-entropy of the positive against R sampled negatives, averaged over positions."""

    def forward(self, user_embeddings, positive_ids, item_table, similarity, negative_ids=None) -> torch.Tensor:
        """Mean loss over P supervised positions: user_embeddings (P, D), positive_ids (P,)."""
        logits, false_negatives = self.candidate_logits(
            user_embeddings, positive_ids, item_table, similarity, negative_ids
        )
        # In place: the logits are a fresh quotient (its backward does not read it); a (P, 1 + R) copy less.
        logits = logits.masked_fill_(F.pad(false_negatives, (1, 0), value=False), torch.finfo(logits.dtype).min)
        return F.cross_entropy(logits, torch.zeros_like(positive_ids))


class BinaryCrossEntropyLoss(NegativeSamplingLoss):
    """Binary cross-entropy with one sampled negative per positive (a negative equal to its positive is skipped),
    at `config.bce_temperature` (`config.temperature` when that is None)."""

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__(config)
        if config.bce_temperature is not None:
            self.temperature = config.bce_temperature

    def forward(self, user_embeddings, positive_ids, item_table, similarity, negative_ids=None) -> torch.Tensor:
        """Mean loss over P supervised positions: user_embeddings (P, D), positive_ids (P,)."""
        logits, false_negatives = self.candidate_logits(
            user_embeddings, positive_ids, item_table, similarity, negative_ids
        )
        targets = torch.zeros_like(logits)
        targets[:, 0] = 1.0
        weights = (~F.pad(false_negatives, (1, 0), value=False)).to(logits.dtype)
        return (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights).sum(1).mean()


def build_loss(config: SequentialRecommenderConfig) -> nn.Module:
    """The loss named by `config.loss`."""
    if config.loss == "bce":
        return BinaryCrossEntropyLoss(config)
    return SampledSoftmaxLoss(config)
