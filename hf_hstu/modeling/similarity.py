"""User-item similarities shared by the training losses and `recommend`.

A similarity first turns the whole item embedding table into per-item representations (`item_table`, once per step:
far cheaper than transforming every gathered candidate), then scores users (P, D) against candidate representations
gathered from that table: one set shared by all users (C, R) or one per user (P, C, R), giving logits (P, C).
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_recommender import SequentialRecommenderConfig


def l2_normalize(embeddings: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Unit-length vectors along the last dimension (norms clamped at `eps`)."""
    return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp(min=eps)


def _pairwise_dot(user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(P, D) x (C, D) or (P, C, D) -> (P, C)."""
    if items.dim() == 2:
        return user @ items.transpose(0, 1)
    return torch.bmm(items, user.unsqueeze(-1)).squeeze(-1)


class Similarity(nn.Module):
    """Base of the similarities: scoring of per-user candidate ids by gathering their representations."""

    def score_candidates(
        self, user_embeddings: torch.Tensor, item_table: torch.Tensor, candidate_ids: torch.Tensor
    ) -> torch.Tensor:
        """(P, D) users against their own (P, C) candidate ids -> (P, C) logits."""
        return self(user_embeddings, F.embedding(candidate_ids, item_table))


class SampledDotProduct(torch.autograd.Function):
    """logits[p, c] = users[p] . table[candidate_ids[p, c]] without the (P, C, D) tensor of gathered rows.

    That tensor (and its gradient, scattered back row by row) is what makes sampled softmax slow on a CPU. Here the
    forward is, on the CPU, a sampled matrix product on the candidates' CSR pattern (its kernel computes each stored
    element on its own, so repeated and unsorted ids in a row are fine; tested), else a gather and bmm; the
    backward is two weighted bag sums: d users[p] = sum_c g[p, c] table[ids[p, c]], and d table[i] = sum of
    g[p, c] users[p] over the (p, c) that picked i, taken in a stable id order, so the sums are deterministic.
    """

    @staticmethod
    def forward(ctx, users: torch.Tensor, table: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
        num_rows, num_candidates = candidate_ids.shape
        # A CSR tensor cannot store more elements than its dense shape has: more candidates than items goes the
        # gather way (a tiny catalogue, where that is cheap).
        if users.device.type == "cpu" and num_candidates <= table.shape[0]:
            row_starts = torch.arange(0, num_rows * num_candidates + 1, num_candidates, device=users.device)
            with warnings.catch_warnings():  # the CSR layout's "beta" notice would be printed to every user
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                pattern = torch.sparse_csr_tensor(
                    row_starts,
                    candidate_ids.reshape(-1),
                    users.new_ones(num_rows * num_candidates),
                    size=(num_rows, table.shape[0]),
                    check_invariants=False,
                )
            logits = torch.sparse.sampled_addmm(pattern, users, table.t(), beta=0.0).values()
            logits = logits.view(num_rows, num_candidates)
        else:
            logits = _pairwise_dot(users, F.embedding(candidate_ids, table))
        ctx.save_for_backward(users, table, candidate_ids)
        return logits

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        users, table, candidate_ids = ctx.saved_tensors
        grad_logits = grad_logits.to(users.dtype).contiguous()  # bf16 when the bmm ran under autocast
        grad_users = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_users = F.embedding_bag(candidate_ids, table, per_sample_weights=grad_logits, mode="sum")
        if ctx.needs_input_grad[1]:
            flat_ids = candidate_ids.reshape(-1)
            order = torch.sort(flat_ids.int(), stable=True).indices  # (P * C,) pairs grouped by item id
            counts = torch.bincount(flat_ids, minlength=table.shape[0])
            grad_table = F.embedding_bag(
                order // candidate_ids.shape[1],  # the user row of each pair
                users,
                counts.cumsum(0) - counts,  # where each item's pairs start
                per_sample_weights=grad_logits.reshape(-1)[order],
                mode="sum",
            )
        return grad_users, grad_table, None


class DotProductSimilarity(Similarity):
    """Dot product of the user embedding with the L2-normalised item embedding (a cosine for L2 users)."""

    def score_candidates(self, user_embeddings, item_table, candidate_ids):
        return SampledDotProduct.apply(user_embeddings.to(item_table.dtype), item_table, candidate_ids)

    def item_table(self, item_weight: torch.Tensor) -> torch.Tensor:
        """(num_items + 1, D) raw embeddings -> (num_items + 1, D) unit-length item representations."""
        return l2_normalize(item_weight)

    def forward(self, user_embeddings: torch.Tensor, item_representations: torch.Tensor) -> torch.Tensor:
        return _pairwise_dot(user_embeddings, item_representations)


class MixtureOfLogitsSimilarity(Similarity):
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

    def item_table(self, item_weight: torch.Tensor) -> torch.Tensor:
        """(num_items + 1, D) -> (num_items + 1, K_i * d_c + K_u * K_i): unit components, then gate logits."""
        components = l2_normalize(self.item_proj(item_weight).unflatten(-1, (self.num_item_components, -1)))
        return torch.cat([components.flatten(-2), self.item_gate(item_weight)], dim=-1)

    def forward(self, user_embeddings: torch.Tensor, item_representations: torch.Tensor) -> torch.Tensor:
        component_size = self.num_item_components * self.component_dim
        item_components = item_representations[..., :component_size].unflatten(-1, (self.num_item_components, -1))
        item_gate_logits = item_representations[..., component_size:]  # (C, KK) or (P, C, KK)
        user_components = l2_normalize(
            self.user_proj(user_embeddings).unflatten(-1, (self.num_user_components, -1))
        )  # (P, Ku, dc)
        if item_components.dim() == 3:  # candidates shared by all users: (C, Ki, dc)
            cosines = torch.einsum("pkd,cld->pckl", user_components, item_components)
        else:  # one candidate set per user: (P, C, Ki, dc)
            cosines = torch.einsum("pkd,pcld->pckl", user_components, item_components)
        cosines = cosines.flatten(-2)  # (P, C, Ku * Ki)
        gate_logits = self.user_gate(user_embeddings).unsqueeze(1) + item_gate_logits + self.logit_gate(cosines)
        return (F.softmax(gate_logits, dim=-1) * cosines).sum(-1)


def build_similarity(config: SequentialRecommenderConfig) -> Similarity:
    """The similarity named by `config.similarity`."""
    if config.similarity == "mol":
        return MixtureOfLogitsSimilarity(config)
    return DotProductSimilarity()
