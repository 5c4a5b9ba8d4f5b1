"""Beyond-accuracy metrics: hand-computed values of each, RecTools' documented examples, exact sharded merging, missing
inputs, the `evaluate` module offline, `evaluate_ranking` and `scripts/evaluate.py` on a tiny saved model."""

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from recommender_testing import save_tiny_dataset, tiny_model
from torch.utils.data import DataLoader

from hf_hstu.evaluation import beyond_accuracy
from hf_hstu.evaluation.beyond_accuracy import ItemPopularity, ListMetricsAccumulator
from hf_hstu.evaluation.ranking import evaluate_checkpoint, evaluate_ranking
from hf_hstu.evaluation.ranking_metrics import (
    RankingMetricsAccumulator,
    load_ranking_metric,
    recommendation_metrics,
)
from hf_hstu.modeling.retrieval import target_ranks
from hf_hstu.training.arguments import DataArguments
from hf_hstu.training.data import load_training_data

REPO_ROOT = Path(__file__).resolve().parents[1]

# A catalogue of 6 items. Training: item 1 has 5 events from 4 users, item 2 2 events (2 users), items 3 and 4 one
# each, items 5 and 6 none (cold).
TRAIN_SEQUENCES = [[1, 2, 1], [1, 3], [2, 1, 4], [1]]
# Feature sets, as a multi-hot table (row 0 = padding): 1 {a}, 2 {a, b}, 3 {c}, 4 {}, 5 {b}, 6 {a, b, c}.
ITEM_FEATURES = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]
# Three users' lists (the second has only two items) and targets: user A's target at position 2, B's at 1, C's missed.
LISTS = [[2, 5, 1], [3, 4, 0], [6, 2, 4]]
TARGETS = [5, 3, 1]

EXPECTED = {
    # Distinct items in the top K over the 6 items: {2, 3, 6}; all six.
    "coverage@1": 3 / 6,
    "coverage@3": 6 / 6,
    # Users with at least K items.
    "full_list_share@1": 3 / 3,
    "full_list_share@3": 2 / 3,
    # Mean training events of the listed items: A 2, B 1, C 0; A (2 + 0 + 5) / 3, B (1 + 1) / 2, C (0 + 2 + 1) / 3.
    "arp@1": (2 + 1 + 0) / 3,
    "arp@3": (7 / 3 + 1 + 1) / 3,
    # -log2(users / 4), a cold item counting as one user: item 1 -> 0, 2 -> 1, 3, 4, 5, 6 -> 2.
    "novelty@1": (1 + 2 + 2) / 3,
    "novelty@3": ((1 + 2 + 0) / 3 + (2 + 2) / 2 + (2 + 1 + 2) / 3) / 3,
    # RecTools: max(p(r) - pu(i), 0) for the target, p(r) = (7 - r) / 6, pu(i) = (7 - q(i)) / 6 with q the dense
    # popularity rank (item 1 -> 1, 2 -> 2, 3 and 4 -> 3), 0 for cold items; divided by the items listed.
    # A: cold item 5 at r = 2: 5/6, only within K = 3 (/ 3). B: item 3 (q = 3) at r = 1: 1 - 4/6 = 1/3 (/ 1, / 2).
    "serendipity@1": (0 + 1 / 3 + 0) / 3,
    "serendipity@3": (5 / 6 / 3 + 1 / 3 / 2 + 0) / 3,
    # Mean Jaccard distance over the pairs: A d(2,5) = 1/2, d(2,1) = 1/2, d(5,1) = 1; B d(3,4) = 1 ({c} vs {});
    # C d(6,2) = 1/3, d(6,4) = 1, d(2,4) = 1. A single item has no pair: 0.
    "ild@1": 0.0,
    "ild@3": ((1 / 2 + 1 / 2 + 1) / 3 + 1 + (1 / 3 + 1 + 1) / 3) / 3,
}


def _popularity() -> ItemPopularity:
    return ItemPopularity.from_sequences(TRAIN_SEQUENCES, num_items=6)


def test_item_popularity_by_hand():
    popularity = _popularity()
    assert popularity.interactions.tolist() == [0, 5, 2, 1, 1, 0, 0]
    assert popularity.users.tolist() == [0, 4, 2, 1, 1, 0, 0]
    assert popularity.num_users == 4 and popularity.num_items == 6
    assert popularity.popularity_ranks().tolist() == [0, 1, 2, 3, 3, 0, 0]
    assert popularity.novelty().tolist() == [0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    as_mapping = {"interactions": [0, 5, 2, 1, 1, 0, 0], "users": [0, 4, 2, 1, 1, 0, 0], "num_users": 4}
    from_mapping = ItemPopularity.from_mapping(as_mapping)
    assert torch.equal(from_mapping.interactions, popularity.interactions)
    assert torch.equal(from_mapping.users, popularity.users) and from_mapping.num_users == 4
    with pytest.raises(ValueError, match="sequence 1: item id 7 is outside 1..6"):
        ItemPopularity.from_sequences([[1], [7]], num_items=6)


def test_each_metric_by_hand():
    accumulator = ListMetricsAccumulator(
        3, (1, 3), num_items=6, item_popularity=_popularity(), item_features=torch.tensor(ITEM_FEATURES)
    )
    accumulator.update(LISTS, TARGETS)
    metrics = accumulator.compute()
    assert list(metrics) == list(EXPECTED)
    for name, value in EXPECTED.items():
        assert metrics[name] == pytest.approx(value, abs=1e-15), name


def test_item_popularity_of_an_arrow_column_in_blocks_equals_the_lists(monkeypatch):
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 31, size=rng.integers(0, 12)).tolist() for _ in range(200)]
    expected = ItemPopularity.from_sequences(sequences, num_items=30)
    column = pa.chunked_array([pa.array(sequences[:70]), pa.array(sequences[70:])])  # two chunks, 0-length rows
    monkeypatch.setattr(beyond_accuracy, "_MAX_EVENTS_PER_BLOCK", 16)  # blocks of a few whole sequences
    for given in (column, column.combine_chunks().slice(0, 200), sequences):
        blocked = ItemPopularity.from_sequences(given, num_items=30)
        assert torch.equal(blocked.interactions, expected.interactions)
        assert torch.equal(blocked.users, expected.users) and blocked.num_users == 200
    sequences[150] = [3, 31]
    with pytest.raises(ValueError, match="sequence 150: item id 31 is outside 1..30"):
        ItemPopularity.from_sequences(pa.chunked_array([pa.array(sequences[:70]), pa.array(sequences[70:])]), 30)


def test_rectools_documented_examples():
    """The examples of RecTools' AvgRecPopularity and MeanInvUserFreq docstrings give the same per-user numbers."""
    # Training interactions: user 1 -> items 1, 2; user 2 -> 1, 3; user 3 -> 1, 2 (ARP example).
    popularity = ItemPopularity.from_sequences([[1, 2], [1, 3], [1, 2]], num_items=3)
    for k, per_user in ((1, [3.0, 1.0, 1.0]), (3, [2.5, 2.0, 1.5])):
        accumulator = ListMetricsAccumulator(3, (k,), item_popularity=popularity, metrics=["arp"])
        accumulator.update([[1, 2, 0], [3, 1, 2], [3, 2, 0]])
        assert accumulator.compute() == {f"arp@{k}": pytest.approx(sum(per_user) / 3, abs=1e-15)}
    # MIUF example: user 1 -> items 1, 2; user 2 -> 1; user 3 -> 1 (item 3 is cold).
    popularity = ItemPopularity.from_sequences([[1, 2], [1], [1]], num_items=3)
    log3 = math.log2(3)
    for k, per_user in ((1, [log3, log3, 0.0]), (3, [log3, log3, log3 / 2])):
        accumulator = ListMetricsAccumulator(3, (k,), item_popularity=popularity, metrics=["novelty"])
        accumulator.update([[3, 0, 0], [2, 3, 0], [1, 2, 0]])
        assert accumulator.compute() == {f"novelty@{k}": pytest.approx(sum(per_user) / 3, abs=1e-15)}


def test_two_shards_merge_to_the_single_pass(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    num_items, num_users, width = 60, 101, 20
    lists = torch.stack([torch.randperm(num_items, generator=generator)[:width] + 1 for _ in range(num_users)])
    lengths = torch.randint(0, width + 1, (num_users,), generator=generator)
    lengths[:70] = width  # most lists full, the others cut short (some empty)
    lists = lists * (torch.arange(width) < lengths[:, None])
    targets = torch.where(torch.rand(num_users, generator=generator) < 0.6, lists[:, 3], 1).clamp(min=1)
    sequences = [torch.randint(1, num_items + 1, (8,), generator=generator).tolist() for _ in range(40)]
    settings = dict(
        list_length=width,
        k_values=(1, 5, 10, 20),
        num_items=num_items,
        item_popularity=ItemPopularity.from_sequences(sequences, num_items),
        item_features=torch.rand(num_items + 1, 7, generator=generator) < 0.3,
    )

    single = ListMetricsAccumulator(**settings)
    single.update(lists, targets)
    shards = []
    for rows in torch.tensor_split(torch.arange(num_users), [37]):  # two uneven "processes"
        local = ListMetricsAccumulator(**settings)
        for batch in rows.split(9):
            local.update(lists[batch], targets[batch])
        shards.append(local)
    total = ListMetricsAccumulator(**settings)
    for shard in reversed(shards):  # the order processes arrive in does not matter
        total.merge(shard)

    assert total.num_users == single.num_users == num_users
    assert total.compute() == single.compute()  # bit-identical

    # Large batches are cut into chunks of bounded pair-distance memory: the same numbers.
    monkeypatch.setattr(beyond_accuracy, "_MAX_PAIRS_PER_CHUNK", 3 * width**2)
    chunked = ListMetricsAccumulator(**settings)
    chunked.update(lists, targets)
    assert chunked.compute() == single.compute()
    assert len(single.compute()) == 6 * 4
    assert 0 < single.compute()["serendipity@20"] and 0 < single.compute()["full_list_share@20"] < 1


def test_missing_inputs_skip_their_metrics_or_fail_when_asked():
    computed = recommendation_metrics(LISTS, TARGETS, (1, 3), target_ranks=[4, 1, 9])
    assert [name for name in computed if "@" not in name] == ["mrr"]
    assert {name.split("@")[0] for name in computed} == {"hr", "recall", "ndcg", "mrr", "full_list_share"}
    with_catalogue = recommendation_metrics(LISTS, TARGETS, (1, 3), num_items=6, item_popularity=_popularity())
    assert {name.split("@")[0] for name in with_catalogue} >= {"coverage", "arp", "novelty", "serendipity"}
    assert "ild@3" not in with_catalogue

    with pytest.raises(ValueError, match="'novelty' needs item_popularity"):
        recommendation_metrics(LISTS, TARGETS, (1, 3), metrics=["hr", "novelty"])
    with pytest.raises(ValueError, match="'ild' needs item_features"):
        recommendation_metrics(LISTS, TARGETS, (1, 3), item_popularity=_popularity(), metrics=["ild"])
    with pytest.raises(ValueError, match="'coverage' needs num_items"):
        recommendation_metrics(LISTS, TARGETS, (1, 3), metrics=["coverage"])
    with pytest.raises(ValueError, match=r"Unknown metrics \['diversity'\]"):
        recommendation_metrics(LISTS, TARGETS, (1, 3), metrics=["diversity"])
    only_ndcg = recommendation_metrics(LISTS, TARGETS, (1, 3), metrics=["ndcg"])
    assert only_ndcg == {"ndcg@1": 1 / 3, "ndcg@3": pytest.approx((1 / math.log2(3) + 1) / 3, abs=1e-15)}


def test_bad_lists_are_named():
    def accumulate(lists, **settings):
        ListMetricsAccumulator(3, (1, 3), **({"num_items": 6} | settings)).update(lists, [1] * len(lists))

    with pytest.raises(ValueError, match=r"list 1 has items after padding \(0\).*\[0, 2, 3\]"):
        accumulate([[1, 2, 3], [0, 2, 3]])
    with pytest.raises(ValueError, match=r"list 0 recommends an item twice: \[4, 2, 4\]"):
        accumulate([[4, 2, 4]])
    with pytest.raises(ValueError, match=r"ids must lie in 0..6"):
        accumulate([[4, 2, 7]])
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        accumulate([[4, 2]])
    with pytest.raises(ValueError, match="catalogue sizes disagree"):
        accumulate([[1, 2, 3]], item_popularity=ItemPopularity.from_sequences([[1]], num_items=5))
    with pytest.raises(ValueError, match="cannot give metrics @3"):
        ListMetricsAccumulator(2, (1, 3))


def test_evaluate_module_full_ranking_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    inputs = dict(num_items=6, item_popularity=_popularity(), item_features=ITEM_FEATURES)
    metric = load_ranking_metric(config_name="full_ranking", cache_dir=str(tmp_path), keep_in_memory=True)
    metric.add_batch(predictions=LISTS[:2], references=TARGETS[:2], ranks=[2, 1])
    metric.add_batch(predictions=LISTS[2:], references=TARGETS[2:], ranks=[5])
    computed = metric.compute(k_values=[1, 3], **inputs)
    # Accuracy from the full ranks 2, 1, 5 (MRR without cutoff too); list metrics as by hand.
    accuracy = {"hr@1": 1 / 3, "hr@3": 2 / 3, "recall@1": 1 / 3, "recall@3": 2 / 3}
    accuracy |= {"ndcg@1": 1 / 3, "ndcg@3": (1 / math.log2(3) + 1) / 3, "mrr@1": 1 / 3, "mrr@3": (1 / 2 + 1) / 3}
    accuracy["mrr"] = (1 / 2 + 1 + 1 / 5) / 3
    assert list(computed) == list(accuracy) + list(EXPECTED)
    for name, value in (accuracy | EXPECTED).items():
        assert computed[name] == pytest.approx(value, abs=1e-15), name
    with pytest.raises(ValueError, match="Unknown configuration 'paper'"):
        load_ranking_metric(config_name="paper", cache_dir=str(tmp_path))


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory):
    """A tiny saved HSTU model over the 40 items of a saved synthetic dataset."""
    root = tmp_path_factory.mktemp("beyond_accuracy")
    dataset = save_tiny_dataset(root / "data")
    tiny_model("hstu", num_items=40, max_seq_len=30).save_pretrained(root / "model")
    return root / "model", dataset


def test_evaluate_ranking_lists_what_recommend_lists(tiny_saved):
    model_dir, dataset = tiny_saved
    model = type(tiny_model("hstu", num_items=40, max_seq_len=30)).from_pretrained(model_dir).eval()
    data = load_training_data(DataArguments(dataset=str(dataset)), model.config.max_seq_len)
    popularity = ItemPopularity.from_sequences(data.splits["train"]["item_ids"], 40)
    loader = DataLoader(data.splits["test"], batch_size=20, collate_fn=data.collator)
    metrics = evaluate_ranking(model, loader, k_values=(5, 10, 30), item_popularity=popularity)

    ranks = RankingMetricsAccumulator(max_rank=40, k_values=(5, 10, 30))
    lists = ListMetricsAccumulator(10, (5, 10), num_items=40, item_popularity=popularity)
    short_lists = 0
    for batch in loader:
        inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "timestamps", "target_timestamps")}
        user_embeddings = model.embed_users(*inputs.values())
        history = batch["input_ids"] * batch["attention_mask"]
        ranks.update(target_ranks(user_embeddings, model.item_table(), model.similarity, batch["target_ids"], history))
        lists.update(model.recommend(**inputs, k=10).item_ids, batch["target_ids"])
        short_lists += sum(40 - len(set(row.tolist()) - {0}) < 30 for row in history)
    assert {name: metrics[name] for name in ranks.compute()} == ranks.compute()
    for name, value in lists.compute().items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    # 30 items are more than some users have left unseen: their lists are short, not an error.
    num_users = len(data.splits["test"])
    assert 0 < short_lists and metrics["full_list_share@30"] == (num_users - short_lists) / num_users
    with pytest.raises(ValueError, match="'ild' needs item_features"):  # before any batch is scored
        evaluate_ranking(model, [], k_values=(5, 10), metrics=["hr", "ild"])
    accuracy_only = evaluate_ranking(model, loader, k_values=(5, 10), metrics=["hr", "mrr"])
    assert accuracy_only == {name: metrics[name] for name in ("hr@5", "hr@10", "mrr@5", "mrr@10", "mrr")}


def test_evaluate_script_prints_the_new_metrics(tiny_saved, capsys):
    model_dir, dataset = tiny_saved
    expected = evaluate_checkpoint(str(model_dir), str(dataset), "test", k_values=(10, 20))
    argv = ["evaluate.py", "--model", str(model_dir), "--dataset", str(dataset), "--top_k", "10,20"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        runpy.run_path(str(REPO_ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    printed = json.loads(capsys.readouterr().out)
    for name in ("hr", "recall", "ndcg", "mrr", "coverage", "full_list_share", "arp", "novelty", "serendipity"):
        assert f"{name}@20" in printed, name
    assert {name: printed[name] for name in expected} == expected
    assert 0 < printed["coverage@20"] <= 1 and printed["arp@10"] > 0 and printed["novelty@10"] > 0


@pytest.mark.slow
def test_evaluate_script_from_the_command_line(tiny_saved, tmp_path):
    """`python scripts/evaluate.py` puts scripts/ first on sys.path, where evaluate.py would shadow the `evaluate`
    library the metrics are computed with; the command runs as the README shows it, offline."""
    model_dir, dataset = tiny_saved
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "scripts/evaluate.py", "--model", str(model_dir), "--dataset", str(dataset)]
    result = subprocess.run(
        [*command, "--top_k", "10,20"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["recall@20"] == printed["hr@20"] and 0 < printed["coverage@20"] <= 1 and "serendipity@10" in printed
