"""Beyond-accuracy metrics of recommendation lists, as recommender papers and RecTools report them.

Each user has a list of recommended item ids, best first, right-padded with 0 when fewer items were recommended. With
L_u@K the first min(K, length) items of user u's list (its length written l), averaged over users unless said:

- coverage@K (RecTools' CatalogCoverage, normalised): distinct items in any L_u@K / catalogue size (all users at once);
- full_list_share@K: share of users whose list has at least K items;
- arp@K (RecTools' AvgRecPopularity): mean over L_u@K of the item's training interactions;
- novelty@K (RecTools' MeanInvUserFreq): mean over L_u@K of -log2(users(i) / n_users), users(i) the training users
  who interacted with item i (an item nobody interacted with counts as one user), n_users all training users;
- serendipity@K (RecTools' Serendipity, one relevant item per user): (1 / l) * sum over L_u@K of
  max(p(r) - pu(i), 0) * rel(i), where r is the item's position, p(r) = (n + 1 - r) / n, pu(i) = (n + 1 - q(i)) / n
  with q(i) the dense popularity rank of i by training interactions (1 = most popular; pu = 0 for an item without
  training interactions), n the catalogue size, and rel(i) = 1 for the user's target item, else 0;
- ild@K (RecTools' IntraListDiversity): mean over the pairs of items of L_u@K of their distance on item features,
  the Jaccard distance 1 - |F(i) & F(j)| / |F(i) | F(j)| of the items' feature sets (0 when neither has a feature).

Per-user means divide by l (the items listed), as RecTools does; a user with an empty list scores 0, and ild is 0 for a
list of fewer than 2 items. `ListMetricsAccumulator` keeps integer counts (list lengths), the best position each item
reached (coverage) and one float64 value per user and metric, summed once at the end with `math.fsum` (the correctly
rounded sum, whatever the order): shards evaluated on different processes merge to exactly the single-process result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

LIST_METRICS = ("coverage", "full_list_share", "arp", "novelty", "serendipity", "ild")
POPULARITY_METRICS = ("arp", "novelty", "serendipity")
FEATURE_METRICS = ("ild",)
_PER_USER_METRICS = ("arp", "novelty", "serendipity", "ild")
_MAX_PAIRS_PER_CHUNK = 2**22  # item pairs whose distances are held at once (float64, a few copies): ~100 MB
_MAX_EVENTS_PER_BLOCK = 2**22  # training events counted at once by `ItemPopularity.from_sequences`: ~100 MB


def _sequence_blocks(
    sequences: Iterable[Sequence[int]] | pa.Array | pa.ChunkedArray, max_events: int = _MAX_EVENTS_PER_BLOCK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(int64 item ids, the length of each sequence) of consecutive whole sequences, about `max_events` ids a block
    (a longer sequence is a block of its own)."""
    if isinstance(sequences, (pa.Array, pa.ChunkedArray)):
        for chunk in sequences.chunks if isinstance(sequences, pa.ChunkedArray) else [sequences]:
            lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy().astype(np.int64)
            ends = np.cumsum(lengths)
            start = 0
            while start < len(lengths):
                first_event = ends[start] - lengths[start]
                stop = max(start + 1, int(np.searchsorted(ends, first_event + max_events, side="right")))
                ids = pc.list_flatten(chunk.slice(start, stop - start)).to_numpy(zero_copy_only=False)
                yield ids.astype(np.int64), lengths[start:stop]
                start = stop
        return
    block: list[np.ndarray] = []
    events = 0
    for sequence in sequences:
        block.append(np.asarray(sequence, dtype=np.int64).reshape(-1))
        events += len(block[-1])
        if events >= max_events:
            yield np.concatenate(block), np.array([len(ids) for ids in block], dtype=np.int64)
            block, events = [], 0
    if block:
        yield np.concatenate(block), np.array([len(ids) for ids in block], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ItemPopularity:
    """Training popularity of each item id (index 0 is padding and stays 0).

    Attributes:
        interactions: (num_items + 1,) int64 training events of each item (ARP, serendipity's popularity rank).
        users: (num_items + 1,) int64 distinct training users of each item (novelty).
        num_users: users in the training data.
    """

    interactions: torch.Tensor
    users: torch.Tensor
    num_users: int

    def __post_init__(self) -> None:
        if self.interactions.shape != self.users.shape or self.interactions.dim() != 1:
            raise ValueError(
                f"interactions and users must be 1-D tensors of the same size (num_items + 1), got "
                f"{tuple(self.interactions.shape)} and {tuple(self.users.shape)}"
            )
        if self.num_users < 1 or int(self.users.max()) > self.num_users:
            raise ValueError(f"num_users={self.num_users} must be >= 1 and >= every item's user count")

    @classmethod
    def from_sequences(
        cls, sequences: Iterable[Sequence[int]] | pa.Array | pa.ChunkedArray, num_items: int
    ) -> ItemPopularity:
        """Count the events and users of each item in training sequences (one sequence of item ids per user): lists,
        or an Arrow list column, e.g. `dataset["train"].with_format("arrow")["item_ids"]`, read without a Python
        object per row. Counted in blocks of whole sequences, so memory stays bounded at any number of users."""
        interactions = np.zeros(num_items + 1, dtype=np.int64)
        users = np.zeros(num_items + 1, dtype=np.int64)
        num_users = 0
        for ids, lengths in _sequence_blocks(sequences):
            rows = np.repeat(np.arange(len(lengths)), lengths)  # block row of each id
            bad = np.flatnonzero((ids < 1) | (ids > num_items))
            if bad.size:
                raise ValueError(
                    f"sequence {num_users + rows[bad[0]]}: item id {ids[bad[0]]} is outside 1..{num_items}"
                )
            interactions += np.bincount(ids, minlength=num_items + 1)
            pairs = np.sort(rows * (num_items + 1) + ids)  # (row, item) keys; a sort: numpy's hashed unique is slower
            distinct = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]
            users += np.bincount(distinct % (num_items + 1), minlength=num_items + 1)
            num_users += len(lengths)
        return cls(torch.from_numpy(interactions), torch.from_numpy(users), num_users)

    @classmethod
    def from_mapping(cls, popularity: ItemPopularity | Mapping) -> ItemPopularity:
        """An `ItemPopularity`, or a mapping with "interactions", "users" (lists indexed by item id) and
        "num_users"."""
        if isinstance(popularity, ItemPopularity):
            return popularity
        missing = {"interactions", "users", "num_users"} - set(popularity)
        if missing:
            raise ValueError(f"item_popularity lacks {sorted(missing)}: give interactions, users and num_users")
        return cls(
            torch.as_tensor(popularity["interactions"], dtype=torch.long),
            torch.as_tensor(popularity["users"], dtype=torch.long),
            int(popularity["num_users"]),
        )

    @property
    def num_items(self) -> int:
        return self.interactions.shape[0] - 1

    def popularity_ranks(self) -> torch.Tensor:
        """(num_items + 1,) dense rank of each item by training interactions, 1 = most popular; 0 for an item
        without any (cold, and the padding id)."""
        distinct = torch.unique(self.interactions[self.interactions > 0])  # ascending
        ranks = distinct.numel() - torch.searchsorted(distinct, self.interactions)
        return torch.where(self.interactions > 0, ranks, 0)

    def novelty(self) -> torch.Tensor:
        """(num_items + 1,) float64 -log2(users / num_users), users counted as at least 1 (0 for the padding id)."""
        values = -torch.log2(self.users.clamp(min=1).double() / self.num_users)
        values[0] = 0.0
        return values


def jaccard_distances(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """1 - |A & B| / |A | B| between the multi-hot rows of `left` (..., M, F) and `right` (..., N, F) (0/1 floats),
    0 when both are empty: (..., M, N). In place on one product-sized buffer and its copy (these are big)."""
    shared = left @ right.transpose(-1, -2)  # |A & B|
    left_sizes, right_sizes = left.sum(dim=-1)[..., :, None], right.sum(dim=-1)[..., None, :]
    union = shared.neg().add_(left_sizes).add_(right_sizes).clamp_(min=1)  # an empty union has 0 / 1 below
    return shared.mul_(-2).add_(left_sizes).add_(right_sizes).div_(union)  # (|A| + |B| - 2 |A & B|) / |A | B|


def select_list_metrics(
    metrics: Sequence[str] | None, has_popularity: bool, has_features: bool, has_catalogue: bool
) -> tuple[str, ...]:
    """The list metrics to compute: those asked for (each needing its inputs), or every one whose inputs are given."""
    available = {
        "coverage": has_catalogue,
        "full_list_share": True,
        **{name: has_popularity for name in POPULARITY_METRICS},
        **{name: has_features for name in FEATURE_METRICS},
    }
    if metrics is None:
        return tuple(name for name in LIST_METRICS if available[name])
    unknown = sorted(set(metrics) - set(LIST_METRICS))
    if unknown:
        raise ValueError(f"Unknown list metrics {unknown}: choose from {list(LIST_METRICS)}")
    needs = {"coverage": "num_items (the catalogue size)", **dict.fromkeys(POPULARITY_METRICS, "item_popularity")}
    needs |= dict.fromkeys(FEATURE_METRICS, "item_features")
    for name in metrics:
        if not available[name]:
            raise ValueError(f"Metric '{name}' needs {needs[name]}, which was not given")
    return tuple(name for name in LIST_METRICS if name in metrics)


def _cpu_tensor(values: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
    return values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def _checked_lists(lists: torch.Tensor, num_items: int | None) -> torch.Tensor:
    """The lists' lengths (B,) after checking ids are in 0..num_items, padding only at the end, no repeated item."""
    if lists.numel() == 0:
        return torch.zeros(lists.shape[0], dtype=torch.long, device=lists.device)
    if lists.min() < 0 or (num_items is not None and lists.max() > num_items):
        raise ValueError(
            f"recommended item ids must lie in 0..{num_items} (0 = padding), got {lists.min()}..{lists.max()}"
        )
    present = lists != 0
    lengths = present.sum(dim=1)
    bad = (present.long().diff(dim=1) > 0).any(dim=1)  # an item after a padding slot
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"list {row} has items after padding (0): pad lists at the end only, got {lists[row].tolist()}"
        )
    ordered = lists.sort(dim=1).values
    repeated = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != 0)).any(dim=1)
    if repeated.any():
        row = int(repeated.nonzero()[0])
        raise ValueError(f"list {row} recommends an item twice: {lists[row].tolist()}")
    return lengths


class ListMetricsAccumulator:
    """Collects recommendation lists over batches (and processes) and computes the beyond-accuracy metrics.

        local = ListMetricsAccumulator(list_length=200, num_items=n, item_popularity=popularity)
        for lists, targets in shard:
            local.update(lists, targets)
        total = ListMetricsAccumulator(list_length=200, num_items=n, item_popularity=popularity)
        for shard_accumulator in accelerate.utils.gather_object([local]):
            total.merge(shard_accumulator)
        metrics = total.compute()

    Args:
        list_length: L, the width of the lists (B, L) given to `update`; every K must be <= L.
        k_values: the cutoffs K.
        num_items: the catalogue size (coverage, serendipity); taken from the popularity or feature table if unset.
        item_popularity: training popularity (arp, novelty, serendipity), an `ItemPopularity` or its mapping.
        item_features: (num_items + 1, F) item features, nonzero = the item has the feature (ild).
        metrics: the metrics of `LIST_METRICS` to compute; None: all whose inputs are given.
    """

    def __init__(
        self,
        list_length: int,
        k_values: Sequence[int],
        num_items: int | None = None,
        item_popularity: ItemPopularity | Mapping | None = None,
        item_features: torch.Tensor | np.ndarray | Sequence | None = None,
        metrics: Sequence[str] | None = None,
    ):
        self.k_values = tuple(int(k) for k in k_values)
        if not self.k_values or min(self.k_values) < 1 or max(self.k_values) > list_length:
            raise ValueError(
                f"Lists of {list_length} items cannot give metrics @{max(self.k_values, default=0)}: pass cutoffs "
                f"between 1 and {list_length}, or longer lists"
            )
        self.list_length = list_length
        self.popularity = ItemPopularity.from_mapping(item_popularity) if item_popularity is not None else None
        self.features = None
        if item_features is not None:
            self.features = _cpu_tensor(item_features) != 0
            if self.features.dim() != 2:
                raise ValueError(
                    f"item_features must be a (num_items + 1, num_features) table, got {tuple(self.features.shape)}"
                )
        sizes = {name: table.shape[0] - 1 for name, table in self._tables().items()}
        if num_items is not None:
            sizes["num_items"] = num_items
        if len(set(sizes.values())) > 1:
            raise ValueError(f"The catalogue sizes disagree: {sizes} (tables have num_items + 1 rows, row 0 padding)")
        self.num_items = next(iter(sizes.values()), None)
        self.metrics = select_list_metrics(
            metrics, self.popularity is not None, self.features is not None, self.num_items is not None
        )
        if self.popularity is not None:
            self.item_novelty, self.popularity_ranks = self.popularity.novelty(), self.popularity.popularity_ranks()
        self.length_counts = torch.zeros(list_length + 1, dtype=torch.long)  # index = list length
        # The best (smallest) 1-based position each item id reached in any list; list_length + 1 = never listed.
        self.best_positions = torch.full(((self.num_items or 0) + 1,), list_length + 1, dtype=torch.long)
        self.values: dict[str, list[torch.Tensor]] = {
            f"{name}@{k}": [] for name in self.metrics if name in _PER_USER_METRICS for k in self.k_values
        }

    def _tables(self) -> dict[str, torch.Tensor]:
        tables = {"item_popularity": self.popularity.interactions} if self.popularity is not None else {}
        return tables | ({"item_features": self.features} if self.features is not None else {})

    @property
    def num_users(self) -> int:
        return int(self.length_counts.sum())

    def update(self, lists: torch.Tensor | np.ndarray | Sequence, target_ids: torch.Tensor | Sequence | None = None):
        """Add a batch of lists (B, L), best first and 0-padded at the end, with each user's target (B,) for
        serendipity."""
        lists = _cpu_tensor(lists).long()
        if lists.dim() != 2 or lists.shape[1] != self.list_length:
            raise ValueError(f"lists must have shape (batch, {self.list_length}), got {tuple(lists.shape)}")
        if target_ids is not None:
            target_ids = _cpu_tensor(target_ids).long()
            if target_ids.shape != (lists.shape[0],):
                raise ValueError(f"target_ids must have shape ({lists.shape[0]},), got {tuple(target_ids.shape)}")
        rows_per_chunk = max(1, _MAX_PAIRS_PER_CHUNK // self.list_length**2)
        if "ild" in self.metrics and lists.shape[0] > rows_per_chunk:  # bound the (rows, L, L) pair distances
            for rows in torch.arange(lists.shape[0]).split(rows_per_chunk):
                self.update(lists[rows], None if target_ids is None else target_ids[rows])
            return
        lengths = _checked_lists(lists, self.num_items)
        self.length_counts += torch.bincount(lengths, minlength=self.list_length + 1)
        if "coverage" in self.metrics and lists.numel():
            positions = torch.arange(1, self.list_length + 1).expand_as(lists)
            self.best_positions.scatter_reduce_(0, lists.flatten(), positions.flatten(), reduce="amin")
        if not self.values:
            return
        listed = [torch.minimum(lengths, torch.tensor(k)) for k in self.k_values]  # l per cutoff, (B,) each
        per_position = {}  # metric -> (B, L) prefix sums of its per-position values
        if "arp" in self.metrics:
            per_position["arp"] = self.popularity.interactions[lists].cumsum(dim=1)
        if "novelty" in self.metrics:
            per_position["novelty"] = self.item_novelty[lists].cumsum(dim=1)
        if "serendipity" in self.metrics:
            per_position["serendipity"] = self._serendipity_numerators(lists, target_ids).cumsum(dim=1)
        if "ild" in self.metrics:
            per_position["ild"] = self._pair_distance_sums(lists)
        for name, prefix_sums in per_position.items():
            for k, count in zip(self.k_values, listed, strict=True):
                totals = prefix_sums[:, k - 1].double()
                if name == "ild":
                    denominators = (count * (count - 1)).double() / 2
                elif name == "serendipity":
                    denominators = (count * self.num_items).double()
                else:
                    denominators = count.double()
                self.values[f"{name}@{k}"].append(torch.where(denominators > 0, totals / denominators, 0.0))

    def _serendipity_numerators(self, lists: torch.Tensor, target_ids) -> torch.Tensor:
        """(B, L) n * max(p(r) - pu(i), 0) * rel(i): max(q(i) - r, 0) for a relevant item with training events,
        n + 1 - r for a relevant item without, 0 for the others."""
        if target_ids is None:
            raise ValueError("serendipity needs each user's target item: pass target_ids to update")
        positions = torch.arange(1, lists.shape[1] + 1).expand_as(lists)
        popularity_ranks = self.popularity_ranks[lists]
        unexpected = torch.where(
            popularity_ranks > 0, (popularity_ranks - positions).clamp(min=0), self.num_items + 1 - positions
        )
        return torch.where(lists == target_ids[:, None], unexpected, 0)

    def _pair_distance_sums(self, lists: torch.Tensor) -> torch.Tensor:
        """(B, L): entry j - 1 is the sum of the Jaccard distances of all pairs among the first j items."""
        features = self.features[lists].double()  # (B, L, F)
        earlier = torch.ones(lists.shape[1], lists.shape[1], dtype=torch.double).triu(diagonal=1)  # i < j
        # Column j: distances of item j to the items before it; lists are padded at the end only, so a listed item
        # has only listed items before it, and the columns of padding slots are dropped.
        return (jaccard_distances(features, features).mul_(earlier).sum(dim=1) * (lists != 0)).cumsum(dim=1)

    def merge(self, other: ListMetricsAccumulator) -> None:
        """Add another shard's state (the same settings, other users)."""
        if (other.list_length, other.k_values, other.metrics, other.num_items) != (
            self.list_length,
            self.k_values,
            self.metrics,
            self.num_items,
        ):
            raise ValueError("Only accumulators of the same list length, cutoffs, metrics and catalogue merge")
        self.length_counts += other.length_counts
        torch.minimum(self.best_positions, other.best_positions, out=self.best_positions)
        for name, values in other.values.items():
            self.values[name].extend(values)

    def compute(self) -> dict[str, float]:
        """The metrics of `self.metrics`, "name@K" for each K, in the order of `LIST_METRICS`."""
        num_users = self.num_users
        if num_users == 0:
            raise ValueError("No lists were accumulated: cannot average metrics over zero users")
        results = {}
        for name in self.metrics:
            for k in self.k_values:
                if name == "coverage":
                    value = int((self.best_positions[1:] <= k).sum()) / self.num_items
                elif name == "full_list_share":
                    value = int(self.length_counts[k:].sum()) / num_users
                else:
                    value = math.fsum(torch.cat(self.values[f"{name}@{k}"]).tolist()) / num_users
                results[f"{name}@{k}"] = value
        return results
