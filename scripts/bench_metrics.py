"""Benchmark the metric computation of an evaluation (after the model has scored): the package's `evaluate` module fed
batch by batch as `evaluate_ranking` feeds it, against the accumulators alone; prints JSON.

Random top-L lists, targets and full-catalogue ranks for an ML-1M-shaped evaluation by default
(`--num_users 138493 --num_items 26744` for ML-20M), with the training popularity of random sequences and 1 to 3
random features per item (as MovieLens genres), so that every metric is computed.
"""

import json
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser

from hf_hstu.evaluation import (
    ItemPopularity,
    ListMetricsAccumulator,
    RankingMetricsAccumulator,
    load_ranking_metric,
)


@dataclass
class BenchArguments:
    num_users: int = field(default=6040)
    num_items: int = field(default=3706)
    top_k: str = field(default="10,50,100,200", metadata={"help": "Cut-offs; the lists have max(K) items."})
    batch_size: int = field(default=256, metadata={"help": "Users per add_batch / update call."})
    num_features: int = field(default=18, metadata={"help": "Item features (ML-1M has 18 genres)."})
    item_features: bool = field(default=True, metadata={"help": "Give item features (ild, O(users x L^2))."})
    seed: int = field(default=0)


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    k_values = tuple(int(k) for k in args.top_k.split(","))
    length = max(k_values)
    generator = torch.Generator().manual_seed(args.seed)
    lists = torch.cat(  # (U, L) distinct ids per user
        [
            torch.rand(len(rows), args.num_items, generator=generator).topk(length, dim=1).indices + 1
            for rows in torch.arange(args.num_users).split(1024)
        ]
    )
    ranks = torch.randint(1, args.num_items + 1, (args.num_users,), generator=generator)
    hits = ranks <= length
    targets = torch.where(hits, lists.gather(1, (ranks.clamp(max=length) - 1)[:, None]).squeeze(1), 1)
    # 1 to 3 features per item, as MovieLens genres (a few hundred distinct sets).
    features = torch.zeros(args.num_items + 1, args.num_features, dtype=torch.bool)
    for item in range(1, args.num_items + 1):
        count = int(torch.randint(1, 4, (1,), generator=generator))
        features[item, torch.randperm(args.num_features, generator=generator)[:count]] = True
    sequences = torch.randint(1, args.num_items + 1, (args.num_users, 50), generator=generator)
    inputs = dict(
        num_items=args.num_items,
        item_popularity=ItemPopularity.from_sequences(sequences.numpy(), args.num_items),
        item_features=features if args.item_features else None,
    )
    batches = torch.arange(args.num_users).split(args.batch_size)

    start = time.perf_counter()
    metric = load_ranking_metric(config_name="full_ranking", keep_in_memory=True)
    for rows in batches:
        metric.add_batch(
            predictions=lists[rows].tolist(), references=targets[rows].tolist(), ranks=ranks[rows].tolist()
        )
    through_module = metric.compute(k_values=list(k_values), **inputs)
    module_seconds = time.perf_counter() - start

    start = time.perf_counter()
    accuracy = RankingMetricsAccumulator(args.num_items, k_values)
    beyond = ListMetricsAccumulator(length, k_values, **inputs)
    for rows in batches:
        accuracy.update(ranks[rows])
        beyond.update(lists[rows], targets[rows])
    direct = accuracy.compute() | beyond.compute()
    direct_seconds = time.perf_counter() - start

    print(
        json.dumps(
            {
                **asdict(args),
                "evaluate_module_seconds": round(module_seconds, 3),
                "accumulators_seconds": round(direct_seconds, 3),
                "same_metrics": through_module == direct,
                "num_metrics": len(direct),
                "distinct_feature_sets": int(features.unique(dim=0).shape[0]),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
