"""The similarities: the research code's full mixture of logits against a hand-written reference of its math, its
top-k against brute force, and the item-embedding normalisation switch."""

import math

import pytest
import torch
import torch.nn.functional as F
from recommender_testing import NUM_ITEMS, tiny_config, tiny_model

from hf_hstu.modeling.retrieval import top_k_items
from hf_hstu.modeling.similarity import DotProductSimilarity, FullMixtureOfLogitsSimilarity

MOL_SIZES = dict(
    hidden_size=6,
    mol_num_user_components=2,
    mol_num_item_components=3,
    mol_component_dim=4,
    mol_query_hidden_dim=5,
    mol_item_hidden_dim=7,
    mol_gating_query_hidden_dim=3,
    mol_gating_item_hidden_dim=4,
    mol_gating_qi_hidden_dim=5,
    mol_temperature=0.5,
)


def _mol(seed: int = 0, **overrides) -> FullMixtureOfLogitsSimilarity:
    torch.manual_seed(seed)
    similarity = FullMixtureOfLogitsSimilarity(tiny_config(similarity="mol_full", **{**MOL_SIZES, **overrides}))
    for parameter in similarity.parameters():  # random biases too, so that every term of the math shows
        torch.nn.init.normal_(parameter, std=0.5)
    return similarity.double().eval()


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def _linear(layer, x: list[float]) -> list[float]:
    weight = layer.weight.tolist()
    bias = layer.bias.tolist() if layer.bias is not None else [0.0] * len(weight)
    return [sum(w * v for w, v in zip(row, x, strict=True)) + b for row, b in zip(weight, bias, strict=True)]


def _swiglu_mlp(mlp, x: list[float]) -> list[float]:
    """Dropout (off), SwiGLU, linear."""
    projected = _linear(mlp[1].proj, x)
    half = len(projected) // 2
    hidden = [_silu(a) * b for a, b in zip(projected[:half], projected[half:], strict=True)]
    return _linear(mlp[2], hidden)


def _gating_mlp(mlp, x: list[float]) -> list[float]:
    """Dropout (off), linear, SiLU, linear."""
    return _linear(mlp[3], [_silu(h) for h in _linear(mlp[1], x)])


def _unit_components(flat: list[float], count: int) -> list[list[float]]:
    size = len(flat) // count
    parts = [flat[i * size : (i + 1) * size] for i in range(count)]
    return [[v / max(math.sqrt(sum(p * p for p in part)), 1e-6) for v in part] for part in parts]


def _reference_logit(mol: FullMixtureOfLogitsSimilarity, user: list[float], item: list[float]) -> float:
    """The research MoL for one (user, item) pair, written out with lists and loops."""
    norm = math.sqrt(sum(v * v for v in item))
    item = [v / norm for v in item]  # l2_normalize_item_embeddings
    queries = _unit_components(_swiglu_mlp(mol.query_proj, user), mol.num_user_components)
    keys = _unit_components(_swiglu_mlp(mol.item_proj, item), mol.num_item_components)
    logits = [sum(a * b for a, b in zip(q, k, strict=True)) / mol.temperature for q in queries for k in keys]
    query_gate = _gating_mlp(mol.query_gate, user)
    item_gate = _gating_mlp(mol.item_gate, item)
    logit_gate = _gating_mlp(mol.logit_gate, logits)
    gates = [_silu(q * i + g) for q, i, g in zip(query_gate, item_gate, logit_gate, strict=True)]
    total = sum(math.exp(g) for g in gates)
    return sum(math.exp(g) / total * logit for g, logit in zip(gates, logits, strict=True))


def test_full_mol_matches_a_hand_written_reference():
    mol = _mol()
    generator = torch.Generator().manual_seed(1)
    users = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    items = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        scores = mol(users, mol.item_table(items))  # (3, 5), candidates shared by all users
        per_user = mol.score_candidates(users, mol.item_table(items), torch.tensor([[4, 0], [2, 2], [1, 3]]))
    expected = torch.tensor(
        [[_reference_logit(mol, u.tolist(), x.tolist()) for x in items] for u in users], dtype=torch.float64
    )
    torch.testing.assert_close(scores, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(per_user, torch.stack([scores[0, [4, 0]], scores[1, [2, 2]], scores[2, [1, 3]]]))


def test_full_mol_logit_gate_without_hidden_layer():
    mol = _mol(mol_gating_qi_hidden_dim=0)
    assert isinstance(mol.logit_gate[1], torch.nn.Linear) and len(mol.logit_gate) == 2
    users, items = torch.randn(2, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        table = mol.item_table(items)
        logits = (
            torch.einsum(
                "pkd,cld->pckl",
                F.normalize(mol.query_proj(users).unflatten(-1, (2, 4)), dim=-1),
                F.normalize(mol.item_proj(F.normalize(items, dim=-1)).unflatten(-1, (3, 4)), dim=-1),
            ).flatten(-2)
            / 0.5
        )
        gates = mol.query_gate(users)[:, None] * table[:, 12:] + mol.logit_gate[1](logits)
        expected = (F.softmax(F.silu(gates), -1) * logits).sum(-1)
        torch.testing.assert_close(mol(users, table), expected)


def test_gate_dropout_keeps_a_convex_combination_and_is_off_in_eval():
    mol = _mol(mol_softmax_dropout=0.5)
    users, items = torch.randn(4, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    with torch.no_grad():
        table = mol.item_table(items)
        evaluated = mol(users, table)
        torch.testing.assert_close(mol(users, table), evaluated)  # deterministic in eval
        components = mol.item_table(items)[:, :12].unflatten(-1, (3, 4))
        logits = (
            torch.einsum(
                "pkd,cld->pckl", F.normalize(mol.query_proj(users).unflatten(-1, (2, 4)), dim=-1), components
            ).flatten(-2)
            / 0.5
        )
        mol.train()
        torch.manual_seed(0)
        dropped = mol(users, table)
    assert not torch.allclose(dropped, evaluated)
    # Renormalised gate probabilities: each score stays between its smallest and largest component logit.
    assert (dropped >= logits.min(-1).values - 1e-9).all() and (dropped <= logits.max(-1).values + 1e-9).all()


def test_full_mol_top_k_over_the_catalogue_is_brute_force():
    model = tiny_model("hstu", similarity="mol_full", **{k: v for k, v in MOL_SIZES.items() if k != "hidden_size"})
    model.eval()
    generator = torch.Generator().manual_seed(2)
    users = F.normalize(torch.randn(5, 16, generator=generator), dim=-1)
    history = torch.tensor([[3, 4, 0], [1, 2, 30], [0, 0, 0], [7, 7, 8], [12, 0, 0]])
    with torch.no_grad():
        table = model.item_table()
        item_ids, scores = top_k_items(users, table, model.similarity, 6, history, max_scores_per_chunk=20)
        all_scores = model.similarity(users, table)  # (5, NUM_ITEMS + 1)
    for row in range(5):
        excluded = {0, *history[row].tolist()}
        ranked = sorted(
            (item for item in range(NUM_ITEMS + 1) if item not in excluded), key=lambda i: -all_scores[row, i]
        )
        assert item_ids[row].tolist() == ranked[:6]
        torch.testing.assert_close(scores[row], all_scores[row, ranked[:6]])


@pytest.mark.parametrize("normalize", [True, False])
def test_item_l2_normalisation_switch(normalize):
    model = tiny_model("sasrec", l2_normalize_item_embeddings=normalize)
    weight = model.item_embeddings.weight
    expected = F.normalize(weight, dim=-1, eps=1e-6) if normalize else weight
    torch.testing.assert_close(model.item_table(), expected)
    torch.testing.assert_close(DotProductSimilarity(normalize).item_table(weight), expected)
