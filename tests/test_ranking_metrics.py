"""Ranking metrics: hand-computed values, tie and exclusion rules, exact sharded accumulation, the evaluate module."""

import math

import evaluate
import numpy as np
import pytest
import torch

from hf_hstu.evaluation.ranking_metrics import (
    EVALUATE_MODULE_PATH,
    RankingMetricsAccumulator,
    load_ranking_metric,
    metrics_from_top_k,
    ranks_from_scores,
    ranks_from_top_k,
    recommendation_metrics,
)

NEG_INF = float("-inf")


def test_top_k_lists_by_hand():
    # Targets at positions 1 and 3, and one list that misses its target.
    top_k = [[7, 1, 2, 3], [4, 5, 6, 8], [1, 2, 3, 4]]
    targets = [7, 6, 9]
    assert ranks_from_top_k(top_k, targets).tolist() == [1, 3, 5]
    metrics = metrics_from_top_k(top_k, targets, k_values=(1, 3))
    expected = {
        "hr@1": 1 / 3,
        "hr@3": 2 / 3,
        "recall@1": 1 / 3,  # one target per user: Recall@K = HR@K
        "recall@3": 2 / 3,
        "ndcg@1": 1 / 3,
        "ndcg@3": (1 + 1 / math.log2(4)) / 3,
        "mrr@1": 1 / 3,
        "mrr@3": (1 + 1 / 3) / 3,
    }
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-15), name
    hit = {"hr@1": 1.0, "recall@1": 1.0, "ndcg@1": 1.0, "mrr@1": 1.0}
    assert metrics_from_top_k([[3, 5]], [3], k_values=(1,)) == hit
    assert metrics_from_top_k([[5, 3]], [3], k_values=(1,)) == dict.fromkeys(hit, 0.0)


def test_ranks_from_scores_ties_and_exclusions():
    scores = torch.tensor(
        [
            [NEG_INF, 0.1, 0.9, 0.5, 0.2],  # target 2 is the best item
            [NEG_INF, 0.3, 0.3, 0.3, 0.1],  # target 3 ties with two items: they rank ahead of it
            [NEG_INF, NEG_INF, 0.2, 0.4, 0.1],  # item 1 excluded (seen); target 4 is below items 3 and 2
            [NEG_INF, NEG_INF, 0.2, 0.4, 0.1],  # the target itself excluded: last place, rank C = 5
        ]
    )
    assert ranks_from_scores(scores, torch.tensor([2, 3, 4, 1])).tolist() == [1, 3, 3, 5]
    assert ranks_from_scores(scores.numpy(), np.array([2, 3, 4, 1])).tolist() == [1, 3, 3, 5]


def test_ranks_from_scores_match_a_loop():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (40, 30), generator=generator).float()  # many ties
    scores[:, 0] = NEG_INF
    targets = torch.randint(1, 30, (40,), generator=generator)
    expected = [sum(float(s) >= float(row[t]) for s in row) for row, t in zip(scores, targets, strict=True)]
    assert ranks_from_scores(scores, targets).tolist() == expected


def test_full_ranking_metrics_by_hand():
    accumulator = RankingMetricsAccumulator(max_rank=101, k_values=(10, 50))
    accumulator.update(torch.tensor([1, 3]))
    accumulator.update([60])
    assert accumulator.num_users == 3
    metrics = accumulator.compute()
    expected = {
        "hr@10": 2 / 3,
        "hr@50": 2 / 3,
        "recall@10": 2 / 3,
        "recall@50": 2 / 3,
        "ndcg@10": (1 + 0.5) / 3,
        "ndcg@50": (1 + 0.5) / 3,
        "mrr@10": (1 + 1 / 3) / 3,
        "mrr@50": (1 + 1 / 3) / 3,
        "mrr": (1 + 1 / 3 + 1 / 60) / 3,
    }
    assert list(metrics) == list(expected)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-15), name


def test_sharded_accumulation_equals_single_pass():
    generator = torch.Generator().manual_seed(1)
    num_users, num_items = 257, 1000
    scores = torch.randn(num_users, num_items + 1, generator=generator)
    scores[:, 0] = NEG_INF
    targets = torch.randint(1, num_items + 1, (num_users,), generator=generator)
    # A well-trained-looking model: boost most targets so that all cutoffs see hits.
    scores[torch.arange(num_users), targets] += torch.rand(num_users, generator=generator) * 4

    single = RankingMetricsAccumulator(max_rank=num_items + 1)
    single.update(ranks_from_scores(scores, targets))

    shard_counts = []
    for shard in torch.tensor_split(torch.arange(num_users), [100, 130]):  # 3 uneven "processes"
        local = RankingMetricsAccumulator(max_rank=num_items + 1)
        for batch in shard.split(17):
            local.update(ranks_from_scores(scores[batch], targets[batch]))
        shard_counts.append(local.counts)
    total = RankingMetricsAccumulator(max_rank=num_items + 1)
    total.merge(torch.cat(shard_counts))  # what accelerator.gather returns

    assert total.num_users == num_users
    assert total.compute() == single.compute()  # bit-identical
    metrics = single.compute()
    assert 0 < metrics["hr@10"] < metrics["hr@50"] < metrics["hr@100"] < metrics["hr@200"] < 1
    assert [metrics[f"recall@{k}"] for k in (10, 50, 100, 200)] == [metrics[f"hr@{k}"] for k in (10, 50, 100, 200)]


def test_bad_inputs_are_named():
    scores = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(torch.tensor([[0.0, float("nan"), 1.0]]), [2])
    with pytest.raises(ValueError, match="0 is padding"):
        ranks_from_scores(scores, [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        ranks_from_scores(scores, [1, 5])
    with pytest.raises(ValueError, match="target_ids must have shape"):
        ranks_from_top_k([[1, 2]], [1, 2])
    with pytest.raises(ValueError, match="cannot give metrics @10"):
        metrics_from_top_k([[1, 2, 3]], [1], k_values=(1, 10))
    accumulator = RankingMetricsAccumulator(max_rank=5)
    with pytest.raises(ValueError, match="zero users"):
        accumulator.compute()
    with pytest.raises(ValueError, match=r"ranks must lie in 1..5"):
        accumulator.update([6])
    with pytest.raises(ValueError, match="histograms of 6 entries"):
        accumulator.merge(torch.zeros(7, dtype=torch.long))


def test_evaluate_module_gives_the_same_numbers(tmp_path):
    generator = torch.Generator().manual_seed(2)
    top_k = torch.stack([torch.randperm(300, generator=generator)[:50] + 1 for _ in range(64)])
    targets = torch.where(torch.rand(64, generator=generator) < 0.7, top_k[:, 7], 301)
    targets[:5] = top_k[:5, 0]
    expected = metrics_from_top_k(top_k, targets, k_values=(1, 10, 50))

    metric = evaluate.load(str(EVALUATE_MODULE_PATH), cache_dir=str(tmp_path))
    accuracy = ["hr", "recall", "ndcg", "mrr"]
    computed = metric.compute(
        predictions=top_k.tolist(), references=targets.tolist(), k_values=[1, 10, 50], metrics=accuracy
    )
    assert computed == expected

    # Unset, the metrics are every one the inputs allow: with the catalogue size, coverage and full lists too.
    packaged = load_ranking_metric(cache_dir=str(tmp_path))
    for batch in torch.arange(64).split(20):
        packaged.add_batch(predictions=top_k[batch].numpy(), references=targets[batch].numpy())
    computed = packaged.compute(k_values=[1, 10, 50], num_items=301)
    assert computed == expected | recommendation_metrics(top_k, targets, (1, 10, 50), num_items=301)
    assert list(computed)[len(expected) :] == [
        f"{name}@{k}" for name in ("coverage", "full_list_share") for k in (1, 10, 50)
    ]
    assert computed["full_list_share@50"] == 1.0

    with pytest.raises(ValueError, match="same number of items"):
        metric.compute(predictions=[[1, 2], [3]], references=[1, 3], k_values=[1])
