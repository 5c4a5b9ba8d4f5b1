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


def _component_dots(user_components: torch.Tensor, item_components: torch.Tensor) -> torch.Tensor:
    """(P, Ku, dc) user components x (C, Ki, dc) shared or (P, C, Ki, dc) per-user item components -> (P, C, Ku * Ki)
    dot products of every (user, item) component pair."""
    if item_components.dim() == 3:
        dots = torch.einsum("pkd,cld->pckl", user_components, item_components)
    else:
        dots = torch.einsum("pkd,pcld->pckl", user_components, item_components)
    return dots.flatten(-2)


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
            # The sort is most of the backward's time; the narrowest integer type that holds the ids sorts fastest
            # (int16 about twice as fast as int32 on a CPU) and gives the same stable order.
            key_dtype = torch.int16 if table.shape[0] <= torch.iinfo(torch.int16).max + 1 else torch.int32
            order = torch.sort(flat_ids.to(key_dtype), stable=True).indices  # (P * C,) pairs grouped by item id
            counts = torch.bincount(flat_ids, minlength=table.shape[0])
            grad_table = F.embedding_bag(
                order // candidate_ids.shape[1],  # the user row of each pair
                users,
                counts.cumsum(0) - counts,  # where each item's pairs start
                per_sample_weights=grad_logits.reshape(-1).index_select(0, order),
                mode="sum",
            )
        return grad_users, grad_table, None


class DotProductSimilarity(Similarity):
    """Dot product of the user embedding with the item embedding, L2-normalised unless `normalize_items` is False
    (then a cosine for L2 users)."""

    def __init__(self, normalize_items: bool = True) -> None:
        super().__init__()
        self.normalize_items = normalize_items

    def score_candidates(self, user_embeddings, item_table, candidate_ids):
        return SampledDotProduct.apply(user_embeddings.to(item_table.dtype), item_table, candidate_ids)

    def item_table(self, item_weight: torch.Tensor) -> torch.Tensor:
        """(num_items + 1, D) raw embeddings -> (num_items + 1, D) item representations (unit length by default)."""
        return l2_normalize(item_weight) if self.normalize_items else item_weight

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
        cosines = _component_dots(user_components, item_components)  # (P, C, Ku * Ki)
        gate_logits = self.user_gate(user_embeddings).unsqueeze(1) + item_gate_logits + self.logit_gate(cosines)
        return (F.softmax(gate_logits, dim=-1) * cosines).sum(-1)


class SwiGLU(nn.Module):
    """silu(x W_a + b_a) * (x W_b + b_b) (Shazeer, 2020), both halves from one (in, 2 out) projection."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 2 * out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, value = self.proj(hidden_states).chunk(2, dim=-1)
        return F.silu(gate) * value


def _gating_mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float, out_bias: bool) -> nn.Sequential:
    """Dropout -> Linear -> SiLU -> Linear: a gating network of the full mixture of logits."""
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim, bias=out_bias)
    )


class FullMixtureOfLogitsSimilarity(Similarity):
    """The research code's mixture of logits (`rails/similarities/mol`, Zhai et al., KDD 2023), without its
    load-balancing auxiliary loss.

    Query and item components come from MLPs (dropout, SwiGLU, linear) and are L2-normalised; the component logits
    l = <q_k, x_l> / mol_temperature of every (query, item) component pair are combined with gate probabilities

        pi = softmax(silu(g_q(u) * g_x(x) + g_l(l))),  logit(u, x) = sum_kl pi_kl * l_kl,

    where g_q, g_x, g_l are MLPs of the user embedding, the item embedding and the logits. In training, dropout on
    pi is followed by renormalisation to sum 1. The item MLPs run once per step over the whole table
    (`item_table`), so an item's dropout mask is shared by the users of a step.
    """

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__()
        self.num_user_components = config.mol_num_user_components
        self.num_item_components = config.mol_num_item_components
        self.component_dim = config.mol_component_dim
        self.temperature = config.mol_temperature
        self.softmax_dropout = config.mol_softmax_dropout
        self.normalize_items = config.l2_normalize_item_embeddings
        hidden_size, num_pairs = config.hidden_size, self.num_user_components * self.num_item_components
        self.query_proj = nn.Sequential(
            nn.Dropout(config.mol_query_dropout),
            SwiGLU(hidden_size, config.mol_query_hidden_dim),
            nn.Linear(config.mol_query_hidden_dim, self.num_user_components * self.component_dim),
        )
        self.item_proj = nn.Sequential(
            nn.Dropout(config.mol_item_dropout),
            SwiGLU(hidden_size, config.mol_item_hidden_dim),
            nn.Linear(config.mol_item_hidden_dim, self.num_item_components * self.component_dim),
        )
        self.query_gate = _gating_mlp(hidden_size, config.mol_gating_query_hidden_dim, num_pairs, 0.0, False)
        self.item_gate = _gating_mlp(
            hidden_size, config.mol_gating_item_hidden_dim, num_pairs, config.mol_gating_item_dropout, False
        )
        if config.mol_gating_qi_hidden_dim > 0:
            self.logit_gate = _gating_mlp(
                num_pairs, config.mol_gating_qi_hidden_dim, num_pairs, config.mol_gating_qi_dropout, True
            )
        else:
            self.logit_gate = nn.Sequential(nn.Dropout(config.mol_gating_qi_dropout), nn.Linear(num_pairs, num_pairs))

    def item_table(self, item_weight: torch.Tensor) -> torch.Tensor:
        """(num_items + 1, D) -> (num_items + 1, K_i * d_c + K_u * K_i): unit item components, then item gates."""
        items = l2_normalize(item_weight) if self.normalize_items else item_weight
        components = l2_normalize(self.item_proj(items).unflatten(-1, (self.num_item_components, -1)))
        return torch.cat([components.flatten(-2), self.item_gate(items)], dim=-1)

    def forward(self, user_embeddings: torch.Tensor, item_representations: torch.Tensor) -> torch.Tensor:
        component_size = self.num_item_components * self.component_dim
        item_components = item_representations[..., :component_size].unflatten(-1, (self.num_item_components, -1))
        item_gates = item_representations[..., component_size:]  # (C, KK) or (P, C, KK)
        user_components = l2_normalize(
            self.query_proj(user_embeddings).unflatten(-1, (self.num_user_components, -1))
        )  # (P, Ku, dc)
        logits = _component_dots(user_components, item_components) / self.temperature  # (P, C, Ku * Ki)
        gates = self.query_gate(user_embeddings).unsqueeze(1) * item_gates + self.logit_gate(logits)
        weights = F.softmax(F.silu(gates), dim=-1)
        if self.training and self.softmax_dropout > 0:
            weights = F.dropout(weights, p=self.softmax_dropout)
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-6)
        return (weights * logits).sum(-1)


def build_similarity(config: SequentialRecommenderConfig) -> Similarity:
    """The similarity named by `config.similarity`."""
    if config.similarity == "mol":
        return MixtureOfLogitsSimilarity(config)
    if config.similarity == "mol_full":
        return FullMixtureOfLogitsSimilarity(config)
    return DotProductSimilarity(config.l2_normalize_item_embeddings)
