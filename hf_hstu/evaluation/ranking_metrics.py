"""Ranking metrics for next-item prediction with one target item per user: HR@K, Recall@K, NDCG@K, MRR@K and MRR.

Ranks are 1-based (rank 1 = the best-scored item). With a single relevant item per user:

- HR@K (hit rate) = 1 if rank <= K else 0, and Recall@K (relevant items found / relevant items) is the same number
  with one target; both are reported under the names users look for;
- NDCG@K = 1 / log2(rank + 1) if rank <= K else 0 (the ideal DCG is 1);
- MRR@K = 1 / rank if rank <= K else 0, and MRR = 1 / rank over the full ranking (no cutoff);

each averaged over users. `RankingMetricsAccumulator` collects ranks batch by batch as a histogram of integer counts,
so shards evaluated on different processes merge exactly: the gathered result equals a single-process run bit for
bit, whatever the batching. The `evaluate` module (`load_ranking_metric()`) computes the same numbers from top-k lists.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from .beyond_accuracy import LIST_METRICS, ItemPopularity, ListMetricsAccumulator, select_list_metrics

if TYPE_CHECKING:
    import evaluate

DEFAULT_K_VALUES = (10, 50, 100, 200)
ACCURACY_METRICS = ("hr", "recall", "ndcg", "mrr")  # "mrr" covers MRR@K and, from full ranks, MRR
EVALUATE_MODULE_PATH = Path(__file__).resolve().parent / "evaluate_modules" / "ranking_metrics"

TensorLike = torch.Tensor | np.ndarray | Sequence


def _as_long_tensor(name: str, values: TensorLike, dims: int) -> torch.Tensor:
    # numpy converts nested lists (what the `evaluate` module hands over) several times faster than torch.
    tensor = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    if tensor.dim() != dims or (tensor.numel() and tensor.is_floating_point()):
        raise ValueError(
            f"{name} must be a {dims}-D tensor of integer ids, got shape {tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor.long()


def _check_targets(target_ids: torch.Tensor, batch_size: int, num_ids: int | None = None) -> None:
    if target_ids.shape != (batch_size,):
        raise ValueError(f"target_ids must have shape ({batch_size},), got {tuple(target_ids.shape)}")
    if target_ids.numel() and target_ids.min() < 1:
        raise ValueError(f"target_ids must be item ids >= 1 (0 is padding), got {target_ids.min().item()}")
    if num_ids is not None and target_ids.numel() and target_ids.max() >= num_ids:
        raise ValueError(f"target id {target_ids.max().item()} is out of range for {num_ids} score columns")


def ranks_from_scores(scores: torch.Tensor | np.ndarray, target_ids: TensorLike) -> torch.Tensor:
    """1-based rank of each user's target item among all items, by score; ties count against the target.

    rank = number of items scoring at least as high as the target (the target included): an item tied with the
    target ranks ahead of it, so a model that scores everything alike gets the worst rank rather than the best. The
    caller sets excluded items (column 0 = padding, items already seen) to -inf beforehand; a target that is itself
    at -inf ties with all of them and gets rank C, a miss for any K < C.

    Args:
        scores: (B, C) scores of item ids 0..C-1, with C = num_items + 1.
        target_ids: (B,) target item ids in 1..C-1.

    Returns:
        (B,) int64 ranks in 1..C, on the device of `scores`.
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (batch, num_items + 1), got {tuple(scores.shape)}")
    if scores.isnan().any():
        rows = scores.isnan().any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"scores contain NaN (rows {rows}): the ranking is undefined")
    target_ids = _as_long_tensor("target_ids", target_ids, dims=1).to(scores.device)
    _check_targets(target_ids, scores.shape[0], scores.shape[1])
    target_scores = scores.gather(1, target_ids[:, None])  # (B, 1)
    return (scores >= target_scores).sum(dim=1)


def ranks_from_top_k(top_k_ids: TensorLike, target_ids: TensorLike) -> torch.Tensor:
    """1-based position of each user's target in its ranked list, L + 1 where the list (length L) misses it.

    Args:
        top_k_ids: (B, L) recommended item ids, best first.
        target_ids: (B,) target item ids (>= 1).

    Returns:
        (B,) int64 ranks in 1..L + 1.
    """
    top_k_ids = _as_long_tensor("top_k_ids", top_k_ids, dims=2)
    target_ids = _as_long_tensor("target_ids", target_ids, dims=1).to(top_k_ids.device)
    _check_targets(target_ids, top_k_ids.shape[0])
    hits = top_k_ids == target_ids[:, None]  # (B, L)
    first_hit = hits.int().argmax(dim=1) + 1  # argmax returns the first maximal position
    return torch.where(hits.any(dim=1), first_hit, top_k_ids.shape[1] + 1)


class RankingMetricsAccumulator:
    """Collects target ranks over batches (and processes) and computes HR@K, NDCG@K, MRR@K and MRR.

    The state is `counts`, a CPU int64 histogram: counts[r] = number of users whose target has rank r. Merging shards
    sums integers, which is exact, so an evaluation sharded over processes gives exactly the single-process metrics:

        local = RankingMetricsAccumulator(max_rank=num_items + 1)
        for batch in shard:
            local.update(ranks_from_scores(scores, targets))
        total = RankingMetricsAccumulator(max_rank=num_items + 1)
        total.merge(accelerator.gather(local.counts.to(accelerator.device)))
        metrics = total.compute()

    (Only the users of each shard must be counted once: drop the duplicates a distributed sampler pads with.)

    Args:
        max_rank: largest possible rank: the number of score columns (num_items + 1) for `ranks_from_scores`, or
            L + 1 for `ranks_from_top_k` with lists of length L.
        k_values: the cutoffs K.
        truncated: the ranks come from top-L lists, where rank L + 1 only means "not in the list": MRR over the full
            ranking is then unknown and not reported, and every K must be <= L.
    """

    def __init__(self, max_rank: int, k_values: Sequence[int] = DEFAULT_K_VALUES, truncated: bool = False):
        k_values = tuple(int(k) for k in k_values)
        if max_rank < 1 or not k_values or min(k_values) < 1:
            raise ValueError(f"Need max_rank >= 1 and cutoffs >= 1, got max_rank={max_rank}, k_values={k_values}")
        if truncated and max(k_values) > max_rank - 1:
            raise ValueError(
                f"Ranked lists of {max_rank - 1} items cannot give metrics @{max(k_values)}: "
                f"pass k_values of at most {max_rank - 1}, or longer lists"
            )
        self.max_rank, self.k_values, self.truncated = max_rank, k_values, truncated
        self.counts = torch.zeros(max_rank + 1, dtype=torch.long)  # index = rank; index 0 stays empty

    @property
    def num_users(self) -> int:
        return int(self.counts.sum())

    def update(self, ranks: TensorLike) -> None:
        """Add a batch of 1-based ranks, (B,)."""
        ranks = _as_long_tensor("ranks", ranks, dims=1).cpu()
        if ranks.numel() and (ranks.min() < 1 or ranks.max() > self.max_rank):
            raise ValueError(f"ranks must lie in 1..{self.max_rank}, got {ranks.min().item()}..{ranks.max().item()}")
        self.counts += torch.bincount(ranks, minlength=self.max_rank + 1)

    def merge(self, counts: torch.Tensor) -> None:
        """Add the histograms of other shards: one `counts` tensor, or several concatenated (e.g. gathered)."""
        counts = counts.detach().cpu().long()
        if counts.dim() != 1 or counts.numel() % (self.max_rank + 1):
            raise ValueError(
                f"counts must be 1-D histograms of {self.max_rank + 1} entries, concatenated; got {tuple(counts.shape)}"
            )
        self.counts += counts.view(-1, self.max_rank + 1).sum(dim=0)

    def compute(self) -> dict[str, float]:
        """The metrics averaged over users: "hr@K", "recall@K", "ndcg@K", "mrr@K" for each K, then "mrr" unless
        truncated."""
        num_users = self.num_users
        if num_users == 0:
            raise ValueError("No ranks were accumulated: cannot average metrics over zero users")
        counts = self.counts[1:].double()  # counts[r - 1] = users at rank r
        ranks = torch.arange(1, self.max_rank + 1, dtype=torch.float64)
        hits = torch.ones_like(ranks)
        per_rank = {"hr": hits, "recall": hits, "ndcg": 1.0 / torch.log2(ranks + 1), "mrr": 1.0 / ranks}
        metrics = {
            f"{name}@{k}": float((counts[:k] * values[:k]).sum() / num_users)
            for name, values in per_rank.items()
            for k in self.k_values
        }
        if not self.truncated:
            metrics["mrr"] = float((counts * per_rank["mrr"]).sum() / num_users)
        return metrics


def metrics_from_top_k(
    top_k_ids: TensorLike, target_ids: TensorLike, k_values: Sequence[int] = DEFAULT_K_VALUES
) -> dict[str, float]:
    """HR@K, Recall@K, NDCG@K and MRR@K of ranked lists (B, L) against one target per user (B,); every K must be
    <= L."""
    top_k_ids = _as_long_tensor("top_k_ids", top_k_ids, dims=2)
    accumulator = RankingMetricsAccumulator(top_k_ids.shape[1] + 1, k_values, truncated=True)
    accumulator.update(ranks_from_top_k(top_k_ids, target_ids))
    return accumulator.compute()


def check_metric_names(
    metrics: Sequence[str] | None,
    has_popularity: bool | None = None,
    has_features: bool | None = None,
    has_catalogue: bool | None = None,
) -> None:
    """Raise when `metrics` names an unknown metric or, for the inputs said to be given or not, one whose input is
    missing (so that an evaluation fails before it runs)."""
    unknown = sorted(set(metrics or ()) - set(ACCURACY_METRICS) - set(LIST_METRICS))
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}: choose from {list(ACCURACY_METRICS + LIST_METRICS)}")
    if metrics is not None and None not in (has_popularity, has_features, has_catalogue):
        select_list_metrics(
            [name for name in metrics if name in LIST_METRICS], has_popularity, has_features, has_catalogue
        )


def recommendation_metrics(
    top_k_ids: TensorLike,
    target_ids: TensorLike,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    target_ranks: TensorLike | None = None,
    num_items: int | None = None,
    item_popularity: ItemPopularity | Mapping | None = None,
    item_features: TensorLike | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """The accuracy metrics of `ACCURACY_METRICS` and the list metrics of `LIST_METRICS` (beyond_accuracy.py) of
    ranked lists (B, L), best first and 0-padded at the end, against one target per user (B,).

    With `target_ranks` (B,), each target's 1-based rank over the full catalogue, the accuracy metrics come from those
    ranks (and "mrr" without cutoff is reported); without, from the target's position in its list, and every K must
    be <= L. `metrics` names the metrics to compute; None: every one whose inputs are given (list metrics only from
    lists of at least max(K) items). Asking for a metric without its input is an error naming the input.
    """
    check_metric_names(metrics)
    top_k_ids = _as_long_tensor("top_k_ids", top_k_ids, dims=2)
    if target_ranks is None:
        accuracy = metrics_from_top_k(top_k_ids, target_ids, k_values)
    else:
        target_ranks = _as_long_tensor("target_ranks", target_ranks, dims=1)
        _check_targets(_as_long_tensor("target_ids", target_ids, dims=1), top_k_ids.shape[0])
        if target_ranks.shape != (top_k_ids.shape[0],):
            raise ValueError(f"target_ranks must have shape ({top_k_ids.shape[0]},), got {tuple(target_ranks.shape)}")
        max_rank = max(num_items or 1, int(target_ranks.max()) if target_ranks.numel() else 1)
        accumulator = RankingMetricsAccumulator(max_rank, k_values)
        accumulator.update(target_ranks)
        accuracy = accumulator.compute()
    wanted = ACCURACY_METRICS if metrics is None else metrics
    results = {name: value for name, value in accuracy.items() if name.split("@")[0] in wanted}
    lists_too_short = top_k_ids.shape[1] < max(int(k) for k in k_values)
    if (metrics is None and lists_too_short) or (metrics is not None and not set(metrics) & set(LIST_METRICS)):
        return results
    accumulator = ListMetricsAccumulator(
        top_k_ids.shape[1],
        k_values,
        num_items=num_items,
        item_popularity=item_popularity,
        item_features=item_features,
        metrics=None if metrics is None else [name for name in metrics if name in LIST_METRICS],
    )
    accumulator.update(top_k_ids, target_ids)
    return results | accumulator.compute()


def load_ranking_metric(**kwargs) -> evaluate.EvaluationModule:
    """The `evaluate` metric computing these metrics from top-k lists, loaded from the copy in this package.

    No network: `evaluate.load` is given the module's folder. Keyword arguments go to `evaluate.load`; with
    `config_name="full_ranking"` the metric also takes each target's rank over the full catalogue (`ranks`).
    """
    return _evaluate_library().load(str(EVALUATE_MODULE_PATH), **kwargs)


def _evaluate_library() -> ModuleType:
    """The `evaluate` library, imported here (it is slow to import and only `load_ranking_metric` needs it).

    `python scripts/train.py` (or any script in scripts/) puts scripts/ first on sys.path, where `scripts/evaluate.py`
    would shadow the library under `import evaluate`: the library is looked up on sys.path without such folders.
    """
    library = sys.modules.get("evaluate")
    if library is not None and hasattr(library, "load"):
        return library
    search_path = [entry for entry in sys.path if not (Path(entry or ".") / "evaluate.py").is_file()]
    spec = importlib.machinery.PathFinder.find_spec("evaluate", search_path)
    if spec is None:
        raise ImportError("The `evaluate` library is not installed: pip install evaluate")
    library = importlib.util.module_from_spec(spec)
    sys.modules["evaluate"] = library
    spec.loader.exec_module(library)
    return library
