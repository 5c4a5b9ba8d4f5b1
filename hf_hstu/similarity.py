"""User-item similarities shared by the training losses and `recommend`.

Both take the user embeddings (P, D) (already post-processed by the model) and raw item embeddings, either one
candidate set shared by all users (C, D) or one per user (P, C, D), and return logits (P, C).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_recommender import SequentialRecommenderConfig


def _l2_normalize(embeddings: torch.Tensor) -> torch.Tensor:
    return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def _pairwise_dot(user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(P, D) x (C, D) or (P, C, D) -> (P, C)."""
    if items.dim() == 2:
        return user @ items.transpose(0, 1)
    return torch.einsum("pd,pcd->pc", user, items)


class DotProductSimilarity(nn.Module):
    """Dot product of the user embedding with the L2-normalised item embedding (a cosine for L2 users)."""

    def forward(self, user_embeddings: torch.Tensor, item_embeddings: torch.Tensor) -> torch.Tensor:
        return _pairwise_dot(user_embeddings, _l2_normalize(item_embeddings))


class MixtureOfLogitsSimilarity(nn.Module):
    """Mixture of logits (Zhai et al., "Revisiting Neural Retrieval on Accelerators", KDD 2023).

    The user and the item embeddings are each projected to K_u and K_i unit-length components; the K_u * K_i
    component cosines are combined with softmax gating weights computed from the user, the item and the
    cosines themselves:

        logit(u, x) = sum_kl softmax_kl(g_u(u) + g_x(x) + g_c(cos)) * cos_kl(u, x)
    """

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__()
        self.num_user_components = config.mol_num_user_components
        self.num_item_components = config.mol_num_item_components
        self.component_dim = config.mol_component_dim
        num_pairs = self.num_user_components * self.num_item_components
        self.user_proj = nn.Linear(config.hidden_size, self.num_user_components * self.component_dim, bias=False)
        self.item_proj = nn.Linear(config.hidden_size, self.num_item_components * self.component_dim, bias=False)
        self.user_gate = nn.Linear(config.hidden_size, num_pairs)
        self.item_gate = nn.Linear(config.hidden_size, num_pairs, bias=False)
        self.logit_gate = nn.Linear(num_pairs, num_pairs, bias=False)

    def _components(self, embeddings: torch.Tensor, proj: nn.Linear, num_components: int) -> torch.Tensor:
        """(..., D) -> (..., K, d_c) unit-length components."""
        components = proj(embeddings).unflatten(-1, (num_components, self.component_dim))
        return _l2_normalize(components)

    def forward(self, user_embeddings: torch.Tensor, item_embeddings: torch.Tensor) -> torch.Tensor:
        user_components = self._components(user_embeddings, self.user_proj, self.num_user_components)  # (P, Ku, dc)
        item_components = self._components(item_embeddings, self.item_proj, self.num_item_components)  # (..C, Ki, dc)
        if item_components.dim() == 3:  # candidates shared by all users: (C, Ki, dc)
            cosines = torch.einsum("pkd,cld->pckl", user_components, item_components)
        else:  # one candidate set per user: (P, C, Ki, dc)
            cosines = torch.einsum("pkd,pcld->pckl", user_components, item_components)
        cosines = cosines.flatten(-2)  # (P, C, Ku * Ki)
        gate_logits = self.user_gate(user_embeddings).unsqueeze(1) + self.item_gate(item_embeddings)
        gate_logits = gate_logits + self.logit_gate(cosines)
        return (F.softmax(gate_logits, dim=-1) * cosines).sum(-1)


def build_similarity(config: SequentialRecommenderConfig) -> nn.Module:
    """The similarity named by `config.similarity`."""
    if config.similarity == "mol":
        return MixtureOfLogitsSimilarity(config)
    return DotProductSimilarity()
