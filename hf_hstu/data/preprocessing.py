"""Interactions -> per-user sequences: stable sort, filters, vocabularies, splits, save / load / push.

The output is a ``datasets.DatasetDict`` with one row per user and split. Every row has ``user_id`` (index
1..num_users), ``item_ids`` (indices 1..num_items), ``timestamps`` (unix seconds) and, when the source has
ratings, ``ratings`` (integers: the rating divided by its step, e.g. half stars 0.5..5 -> 1..10). Validation and
test rows also have ``target_item_id``, ``target_timestamp`` (and ``target_rating``); their lists are the
history strictly before the target. Split protocols:

- ``leave_one_out`` (default, RecTools' protocol): train = all but the last 2 events; validation target = the
  second-to-last event; test target = the last one. Users need at least 3 events.
- ``paper`` (the HSTU reference code's): train = all but the last event; test target = the last one; no
  validation split. Users need at least 2 events.
- ``temporal``: a global time split. With cut-offs ``validation_start <= test_start`` (unix seconds; by default
  the quantiles leaving ``validation_fraction`` and ``test_fraction`` of the events after them), train = each
  user's events before ``validation_start``; validation target = the user's first event in
  ``[validation_start, test_start)`` with the events before ``validation_start`` as history; test target = the
  user's first event at or after ``test_start`` with all events before ``test_start`` as history. A user appears
  in a split only if both its history and its target are non-empty.

Events are ordered per user by (timestamp, original row order), a stable sort, so ties keep the source's order
on every machine.

Duplicates: ``PreprocessingConfig.duplicates`` is the one policy for repeated rows. Exact duplicates (same user,
item and timestamp as an earlier row, among the rows kept by ``min_rating``) are kept and counted by default
(``"keep"``: ``exact_duplicates`` in ``preprocessing.json``, and a logged warning), dropped (``"drop"``: the first
in file order stays) or refused (``"error"``); ``"first"`` / ``"last"`` keep one interaction per (user, item) pair.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import datasets
import huggingface_hub
import numpy as np
import pandas as pd
import pyarrow as pa
from datasets.table import InMemoryTable

from ..progress import progress, quiet_library_progress_bars
from ._segments import concat_ranges, offsets_from_lengths
from .download import staging_dir_beside
from .item_features import ItemTableConfig, attach_item_features, item_features_for, save_item_features
from .sources import (
    Errors,
    InteractionChunks,
    PathLike,
    TimestampUnit,
    default_filters,
    load_raw_interactions,
    read_interactions,
)
from .vocabulary import ItemVocabulary, UserVocabulary

logger = logging.getLogger(__name__)

METADATA_FILE = "preprocessing.json"
SPLIT_PROTOCOLS = ("leave_one_out", "paper", "temporal")
DUPLICATE_POLICIES = ("keep", "drop", "error", "first", "last")
_MIN_EVENTS = {"leave_one_out": 3, "paper": 2, "temporal": 1}


@dataclass
class PreprocessingConfig:
    """How interactions become sequences (filters and split protocol); also the ``preprocess.py`` flags."""

    split: Literal["leave_one_out", "paper", "temporal"] = field(
        default="leave_one_out", metadata={"help": "Split protocol: leave_one_out, paper or temporal."}
    )
    min_rating: float | None = field(
        default=None, metadata={"help": "Keep only interactions with rating >= this (before any other filter)."}
    )
    duplicates: Literal["keep", "drop", "error", "first", "last"] = field(
        default="keep",
        metadata={
            "help": "Duplicate rows. keep: keep them all (exact duplicates, same user, item and timestamp, are "
            "counted in preprocessing.json and logged); drop: drop exact duplicates, keeping the first in file order; "
            "error: refuse a file with exact duplicates; first / last: keep only the first / last interaction of "
            "each (user, item) pair in time order (drops exact duplicates and repeated consumption)."
        },
    )
    dedup: Literal["none", "first", "last"] | None = field(
        default=None, metadata={"help": "Deprecated: use --duplicates first|last (none: --duplicates keep)."}
    )
    k_core: int | None = field(
        default=None,
        metadata={"help": "Iterative k-core: drop users and items with < k interactions until none is left. 0: off."},
    )
    paper_filter: int | None = field(
        default=None,
        metadata={
            "help": "The HSTU paper's single-pass Amazon filter: keep users and items with >= k rows in the raw "
            "data, then drop users left with < k rows. Default 5 for Amazon ratings CSVs, else off. 0: off."
        },
    )
    test_start: int | None = field(
        default=None, metadata={"help": "temporal: events at or after this unix time are test (default: quantile)."}
    )
    validation_start: int | None = field(
        default=None,
        metadata={
            "help": "temporal: start of the validation window (default: a quantile, unless test_start is given: "
            "then there is no validation split unless this is given too)."
        },
    )
    test_fraction: float = field(
        default=0.1, metadata={"help": "temporal: fraction of events at or after the default test cut-off."}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "temporal: fraction of events in the default validation window (0: none)."}
    )

    def __post_init__(self):
        if self.split not in SPLIT_PROTOCOLS:
            raise ValueError(f"split must be one of {SPLIT_PROTOCOLS}, got {self.split!r}")
        if self.dedup is not None:
            if self.dedup not in ("none", "first", "last"):
                raise ValueError(f'dedup must be "none", "first" or "last", got {self.dedup!r}')
            replacement = "keep" if self.dedup == "none" else self.dedup
            warnings.warn(
                f"dedup={self.dedup!r} is deprecated: use duplicates={replacement!r}", FutureWarning, stacklevel=3
            )
            self.duplicates, self.dedup = replacement, None
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {self.duplicates!r}")
        for name in ("k_core", "paper_filter"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0 < self.test_fraction < 1 and 0 <= self.validation_fraction < 1 - self.test_fraction):
            raise ValueError(
                f"need 0 < test_fraction < 1 and 0 <= validation_fraction < 1 - test_fraction, "
                f"got {self.test_fraction} and {self.validation_fraction}"
            )


@dataclass
class SequenceData:
    """Preprocessed sequences with their vocabularies and a record of how they were made."""

    dataset: datasets.DatasetDict
    item_vocabulary: ItemVocabulary
    user_vocabulary: UserVocabulary
    metadata: dict
    item_features: datasets.Dataset | None = None  # the item table (hf_hstu.data.item_features), saved beside

    def save(
        self, output_dir: PathLike, *, format: Literal["arrow", "parquet"] = "arrow", overwrite: bool = False
    ) -> Path:
        """Write the splits (``save_to_disk``, or one ``<split>.parquet`` each), the vocabularies and
        ``preprocessing.json`` to ``output_dir``: everything goes to a temporary directory beside it, renamed
        into place only once complete."""
        if format not in ("arrow", "parquet"):
            raise ValueError(f'format must be "arrow" or "parquet", got {format!r}')
        output = Path(output_dir)
        _check_output(output, overwrite)
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir_beside(output)
        try:
            with quiet_library_progress_bars():
                if format == "arrow":
                    self.dataset.save_to_disk(staging)
                else:
                    for split, dataset in self.dataset.items():
                        dataset.to_parquet(staging / f"{split}.parquet")
                if self.item_features is not None:
                    save_item_features(self.item_features, staging, format)
            self.item_vocabulary.save(staging)
            self.user_vocabulary.save(staging)
            (staging / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2), encoding="utf-8")
            _install(staging, output)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return output

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None) -> None:
        """Push the splits as a Hub dataset (parquet) and add the vocabularies and ``preprocessing.json``.

        A Hub dataset has one schema for all its splits, so the train split is pushed with empty (null) target
        columns; :func:`load_sequences` drops them again.
        """
        schema = max((dataset.data.schema for dataset in self.dataset.values()), key=len)
        aligned = {}
        for split, dataset in self.dataset.items():
            table = dataset.data.table
            for column in schema:
                if column.name not in table.column_names:
                    table = table.append_column(column, pa.nulls(len(table), column.type))
            aligned[split] = _in_memory_dataset(table, split, dataset.info.description)
        with quiet_library_progress_bars(), tempfile.TemporaryDirectory() as folder:
            datasets.DatasetDict(aligned).push_to_hub(repo_id, private=private, token=token)
            paths = [self.item_vocabulary.save(folder), self.user_vocabulary.save(folder), Path(folder) / METADATA_FILE]
            paths[-1].write_text(json.dumps(self.metadata, indent=2), encoding="utf-8")
            if self.item_features is not None:
                paths.append(save_item_features(self.item_features, folder, "parquet"))
            api = huggingface_hub.HfApi(token=token)
            for path in paths:
                api.upload_file(
                    path_or_fileobj=str(path),
                    path_in_repo=path.name,
                    repo_id=repo_id,
                    repo_type="dataset",
                    commit_message=f"Add {path.name}",
                )


def _install(staging: Path, output: Path) -> None:
    """Move the complete ``staging`` folder to ``output``, replacing a previous one only once it is in place."""
    if output.exists():
        retired = staging_dir_beside(output)
        output.replace(retired)
        staging.replace(output)
        shutil.rmtree(retired)
    else:
        staging.replace(output)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists (pass overwrite=True / --overwrite to replace it)")
    if output.exists() and not (output / METADATA_FILE).is_file():
        raise FileExistsError(f"{output} exists and is not a preprocessed dataset; refusing to replace it")


def _stable_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (user, timestamp, row position): a stable sort on one int64 key when it fits."""
    low, high = int(timestamps.min()), int(timestamps.max())
    span = high - low + 1
    if (int(users.max()) + 1) * span < 2**62:
        key = users.astype(np.int64) * span + (timestamps - low)
        return np.argsort(key, kind="stable")
    return np.lexsort((timestamps, users))


def _exact_duplicates(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Mask of the rows repeating an earlier row's (user, item, timestamp), for rows sorted by (user, timestamp,
    position): only rows tied with a neighbour on (user, timestamp) can be duplicates, so only those are hashed."""
    tied = (users[1:] == users[:-1]) & (timestamps[1:] == timestamps[:-1])
    candidates = np.flatnonzero(np.r_[False, tied] | np.r_[tied, False])
    repeated = np.zeros(len(users), dtype=bool)
    if len(candidates):
        keys = {"user": users[candidates], "timestamp": timestamps[candidates], "item": items[candidates]}
        repeated[candidates] = pd.DataFrame(keys).duplicated().to_numpy()
    return repeated


def _duplicate_policy(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, policy: str, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the rows ``policy`` keeps, mask of the exact duplicates) of rows sorted by (user, time, position)."""
    repeated = _exact_duplicates(users, items, timestamps)
    if policy == "drop":
        return ~repeated, repeated
    if policy in ("first", "last"):
        pairs = pd.Series(users.astype(np.int64) * num_items + items)
        return ~pairs.duplicated(keep=policy).to_numpy(), repeated
    return np.ones(len(users), dtype=bool), repeated


def _refuse_duplicates(source: str, count: int, user: object, item: object, timestamp: int) -> None:
    raise ValueError(
        f"{source}: {count} exact duplicate rows (same user, item and timestamp as an earlier row), "
        f"the first: user {user}, item {item}, timestamp {timestamp}. Pass duplicates='drop' (--duplicates drop) to "
        "keep only the first of each, or 'keep' to keep them all"
    )


def _warn_kept_duplicates(source: str, count: int) -> None:
    if count:
        logger.warning(
            "%s: kept %d exact duplicate rows (same user, item and timestamp as an earlier row); "
            "duplicates='drop' (--duplicates drop) removes them, 'error' refuses them",
            source,
            count,
        )


def _k_core(users: np.ndarray, items: np.ndarray, k: int, num_users: int, num_items: int) -> np.ndarray:
    """Mask of the rows in the k-core: repeatedly drop users and items with fewer than k rows until stable."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=num_users)
        item_counts = np.bincount(items[keep], minlength=num_items)
        too_few = keep & ((user_counts[users] < k) | (item_counts[items] < k))
        if not too_few.any():
            return keep
        keep &= ~too_few


def _paper_filter(users: np.ndarray, items: np.ndarray, k: int, num_users: int, num_items: int) -> np.ndarray:
    """Mask of the rows kept by the HSTU reference code's Amazon filter: users and items with >= k rows counted on
    the unfiltered data, then users left with >= k rows (a single pass, not a k-core)."""
    user_counts = np.bincount(users, minlength=num_users)
    item_counts = np.bincount(items, minlength=num_items)
    keep = (user_counts[users] >= k) & (item_counts[items] >= k)
    return keep & (np.bincount(users[keep], minlength=num_users)[users] >= k)


def _rating_step(ratings: np.ndarray) -> float:
    """1 when all ratings are whole numbers, 0.5 when all are multiples of 0.5 (half stars)."""
    for step in (1.0, 0.5):
        if np.all(np.mod(ratings, step) == 0):
            return step
    raise ValueError(
        "ratings must be whole numbers or multiples of 0.5 to be stored as integers; drop the rating column"
    )


def _cutoff(timestamps: np.ndarray, fraction_after: float) -> int:
    """Time such that about ``fraction_after`` of the events are at or after it."""
    return int(np.quantile(timestamps, 1 - fraction_after, method="higher"))


def _split_table(
    events: dict[str, np.ndarray],
    offsets: np.ndarray,
    users: np.ndarray,
    history_lengths: np.ndarray,
    with_target: bool,
    history: dict[str, pa.Array] | None = None,
    first_user: int = 0,
) -> tuple[pa.Table, dict[str, pa.Array]]:
    """Rows for ``users`` (0-based): their first ``history_lengths`` events as lists, and the next event as target.

    Args:
        events: flat per-event arrays sorted by (user, time): item_ids, timestamps[, ratings].
        offsets: (num_users + 1,) start of each user's events in ``events``.
        history: list arrays already built for the same users and lengths (shared instead of rebuilt).
        first_user: added to ``users`` for their ``user_id`` (``users`` index ``offsets``).
    """
    if history is None:
        positions = concat_ranges(offsets[users], history_lengths)
        list_offsets = offsets_from_lengths(history_lengths)
        list_type = pa.ListArray if list_offsets[-1] < 2**31 else pa.LargeListArray  # int32 offsets when they fit
        list_offsets = pa.array(list_offsets.astype(np.int32 if list_type is pa.ListArray else np.int64))
        history = {name: list_type.from_arrays(list_offsets, values[positions]) for name, values in events.items()}
    columns = {"user_id": pa.array(users.astype(np.int64) + 1 + first_user), **history}
    if with_target:
        targets = offsets[users] + history_lengths
        singular = {"item_ids": "target_item_id", "timestamps": "target_timestamp", "ratings": "target_rating"}
        columns.update({singular[name]: pa.array(values[targets]) for name, values in events.items()})
    return pa.table(columns), history


def _temporal_cutoffs(config: PreprocessingConfig, cutoff: Callable[[float], int]) -> dict[str, int | None]:
    """The temporal split's ``validation_start`` and ``test_start``: given, or ``cutoff(fraction_after)``."""
    test_start = config.test_start if config.test_start is not None else cutoff(config.test_fraction)
    validation_start = config.validation_start
    if validation_start is None and config.validation_fraction > 0 and config.test_start is None:
        validation_start = cutoff(config.test_fraction + config.validation_fraction)
    if validation_start is not None and validation_start > test_start:
        raise ValueError(f"validation_start {validation_start} is after test_start {test_start}")
    return {"validation_start": validation_start, "test_start": test_start}


def _split_tables(
    events: dict[str, np.ndarray],
    user_codes: np.ndarray,
    num_users: int,
    split: str,
    cutoffs: dict[str, int | None],
    first_user: int = 0,
) -> dict[str, pa.Table]:
    """The split tables of users ``first_user .. first_user + num_users - 1`` (0-based) whose events are
    ``events``, sorted by (user, time); ``user_codes`` holds each event's user minus ``first_user``."""
    lengths = np.bincount(user_codes, minlength=num_users)
    offsets = offsets_from_lengths(lengths)
    all_users = np.arange(num_users)
    rows = functools.partial(_split_table, events, offsets, first_user=first_user)
    if split == "leave_one_out":
        train, history = rows(all_users, lengths - 2, with_target=False)
        validation, _ = rows(all_users, lengths - 2, with_target=True, history=history)
        test, _ = rows(all_users, lengths - 1, with_target=True)
        return {"train": train, "validation": validation, "test": test}
    if split == "paper":
        train, history = rows(all_users, lengths - 1, with_target=False)
        test, _ = rows(all_users, lengths - 1, with_target=True, history=history)
        return {"train": train, "test": test}
    timestamps = events["timestamps"]
    test_start, validation_start = cutoffs["test_start"], cutoffs["validation_start"]
    tables = {}
    before_test = np.bincount(user_codes[timestamps < test_start], minlength=num_users)
    train_end = before_test
    if validation_start is not None:
        before_validation = np.bincount(user_codes[timestamps < validation_start], minlength=num_users)
        train_end = before_validation
        has_target = before_validation < lengths
        first_after = np.where(has_target, offsets[:-1] + before_validation, 0)
        has_target &= timestamps[first_after] < test_start
        users = np.flatnonzero((before_validation > 0) & has_target)
        tables["validation"] = rows(users, before_validation[users], with_target=True)[0]
    users = np.flatnonzero(train_end > 0)
    tables["train"] = rows(users, train_end[users], with_target=False)[0]
    users = np.flatnonzero((before_test > 0) & (before_test < lengths))
    tables["test"] = rows(users, before_test[users], with_target=True)[0]
    return {name: tables[name] for name in ("train", "validation", "test") if name in tables}


def _check_splits(dataset_name: str, config: PreprocessingConfig, cutoffs: dict, num_rows: dict[str, int]) -> None:
    empty = [name for name, rows in num_rows.items() if rows == 0]
    if empty:
        raise ValueError(f"{dataset_name}: split {empty[0]!r} is empty with split={config.split!r} {cutoffs}")


def _metadata(dataset_name: str, source: str, config: PreprocessingConfig, *, source_check: dict, **counts) -> dict:
    """The record of a preprocessing run (``preprocessing.json``, and each split's description)."""
    return {
        "dataset": dataset_name,
        "source": source,
        "split": config.split,
        "config": asdict(config),
        **counts,  # num_users, num_items, num_interactions, num_rows, ..., exact_duplicates (in this order)
        **source_check,  # official datasets: source_verified, source_modified, source_rows, official_rows, ...
    }


def build_sequences(
    interactions: pd.DataFrame, config: PreprocessingConfig | None = None, dataset_name: str = "custom"
) -> SequenceData:
    """Turn interactions (columns user_id, item_id, timestamp[, rating]; see :mod:`hf_hstu.data.sources`) into
    per-user sequences split by ``config.split``; fully vectorised.

    A frame that did not come from a reader of :mod:`hf_hstu.data.sources` is validated first.
    """
    config = config or PreprocessingConfig()
    if "skipped_rows" not in interactions.attrs:
        interactions = read_interactions(interactions, rating_col="rating" if "rating" in interactions else None)
    dropped = {"malformed": sum(interactions.attrs["skipped_rows"].values())}
    num_raw = len(interactions)
    if num_raw == 0:
        raise ValueError(f"{interactions.attrs['source']}: no interactions to preprocess")
    has_ratings = "rating" in interactions.columns
    ratings = interactions["rating"].to_numpy(dtype=np.float64) if has_ratings else None
    keep = None
    if config.min_rating is not None:
        if not has_ratings:
            raise ValueError(f"min_rating={config.min_rating} needs ratings, but {dataset_name} has none")
        keep = ratings >= config.min_rating
        dropped["below_min_rating"] = int((~keep).sum())

    def kept(values):
        return values if keep is None else values[keep]

    user_codes, user_ids = pd.factorize(kept(interactions["user_id"]), sort=True)
    user_codes = user_codes.astype(np.int32)
    item_codes, item_ids = pd.factorize(kept(interactions["item_id"]), sort=True)
    item_codes = item_codes.astype(np.int32)
    timestamps = kept(interactions["timestamp"].to_numpy(dtype=np.int64))
    ratings = kept(ratings) if has_ratings else None
    source, skipped_rows = interactions.attrs["source"], interactions.attrs["skipped_rows"]
    source_check = interactions.attrs.get("source_check", {})
    del interactions  # frees the frame when the caller passed it without keeping a reference
    if len(timestamps) == 0:
        raise ValueError(f"{dataset_name}: no interactions left after min_rating={config.min_rating}")
    num_users, num_items = len(user_ids), len(item_ids)

    order = _stable_order(user_codes, timestamps)
    user_codes, item_codes, timestamps = user_codes[order], item_codes[order], timestamps[order]
    ratings = ratings[order] if has_ratings else None
    del order

    keep, repeated = _duplicate_policy(user_codes, item_codes, timestamps, config.duplicates, num_items)
    exact_duplicates = int(repeated.sum())
    if exact_duplicates and config.duplicates == "error":
        row = int(np.argmax(repeated))
        _refuse_duplicates(
            source, exact_duplicates, user_ids[user_codes[row]], item_ids[item_codes[row]], timestamps[row]
        )
    del repeated
    if config.duplicates == "keep":
        _warn_kept_duplicates(source, exact_duplicates)
    else:
        dropped["duplicates"] = int((~keep).sum())
    for name, rule in (("paper_filter", _paper_filter), ("k_core", _k_core)):
        k = getattr(config, name)
        if k:
            before = int(keep.sum())
            sub = np.flatnonzero(keep)
            keep[sub] = rule(user_codes[sub], item_codes[sub], k, num_users, num_items)
            dropped[name] = before - int(keep.sum())
    min_events = _MIN_EVENTS[config.split]
    counts = np.bincount(user_codes[keep], minlength=num_users)
    short = keep & (counts[user_codes] < min_events)
    dropped["short_sequences"] = int(short.sum())
    keep &= ~short
    if not keep.any():
        _nothing_left(dataset_name, num_raw, config, dropped)
    if not keep.all():
        user_codes, item_codes, timestamps = user_codes[keep], item_codes[keep], timestamps[keep]
        ratings = ratings[keep] if has_ratings else None

    used_users = np.bincount(user_codes, minlength=num_users) > 0
    used_items = np.bincount(item_codes, minlength=num_items) > 0
    user_codes = (np.cumsum(used_users) - 1)[user_codes]  # compact, order-preserving re-coding
    item_codes = (np.cumsum(used_items) - 1)[item_codes]
    user_vocabulary = UserVocabulary(np.asarray(user_ids)[used_users])
    item_vocabulary = ItemVocabulary(np.asarray(item_ids)[used_items])
    num_users, num_items = len(user_vocabulary), len(item_vocabulary)

    events = {"item_ids": item_codes.astype(np.int64) + 1, "timestamps": timestamps}
    del item_codes
    rating_step = None
    if has_ratings:
        rating_step = _rating_step(ratings)
        events["ratings"] = np.rint(ratings / rating_step).astype(np.int64)
        del ratings
    cutoffs = {}
    if config.split == "temporal":
        cutoffs = _temporal_cutoffs(config, lambda fraction_after: _cutoff(timestamps, fraction_after))
    tables = _split_tables(events, user_codes, num_users, config.split, cutoffs)
    _check_splits(dataset_name, config, cutoffs, {name: table.num_rows for name, table in tables.items()})

    metadata = _metadata(
        dataset_name,
        source,
        config,
        num_users=num_users,
        num_items=num_items,
        num_interactions=len(timestamps),
        num_rows={name: table.num_rows for name, table in tables.items()},
        has_ratings=has_ratings,
        rating_step=rating_step,
        timestamp_range=[int(timestamps.min()), int(timestamps.max())],
        cutoffs=cutoffs,
        raw_interactions=num_raw,
        dropped=dropped,
        skipped_rows=skipped_rows,
        exact_duplicates=exact_duplicates,
        source_check=source_check,
    )
    description = json.dumps(metadata)
    dataset = datasets.DatasetDict(
        {name: _in_memory_dataset(table, name, description) for name, table in tables.items()}
    )
    return SequenceData(dataset, item_vocabulary, user_vocabulary, metadata)


def _in_memory_dataset(table: pa.Table, split: str, description: str) -> datasets.Dataset:
    return datasets.Dataset(
        InMemoryTable(table),
        info=datasets.DatasetInfo(description=description),
        split=datasets.NamedSplit(split),
        fingerprint=_fingerprint(split, description, table.schema),
    )


def _fingerprint(split: str, description: str, schema: pa.Schema) -> str:
    """A split's datasets fingerprint from its description and schema (so that datasets hashes no table)."""
    return hashlib.sha256(f"{split}:{description}:{schema}".encode()).hexdigest()[:16]


def _nothing_left(dataset_name: str, num_raw: int, config: PreprocessingConfig, dropped: dict) -> None:
    filters = ", ".join(
        f"{name}={getattr(config, name)!r}" for name in ("min_rating", "duplicates", "k_core", "paper_filter")
    )
    raise ValueError(
        f"{dataset_name}: no interactions left after filtering {num_raw} rows (filters: {filters}; users need >= "
        f"{_MIN_EVENTS[config.split]} events for split={config.split!r}); dropped: {dropped}"
    )


def preprocess(
    dataset: str,
    output_dir: PathLike | None = None,
    *,
    config: PreprocessingConfig | None = None,
    raw_dir: PathLike | None = None,
    raw_path: PathLike | pd.DataFrame | datasets.Dataset | None = None,
    cache_dir: PathLike | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str | None = None,
    delimiter: str | None = None,
    errors: Errors = "raise",
    timestamp_unit: TimestampUnit | None = None,
    save_format: Literal["arrow", "parquet"] = "arrow",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool | None = None,
    memory_budget_mb: float | None = None,
    item_table: ItemTableConfig | None = None,
) -> SequenceData:
    """Load a dataset (see :func:`~hf_hstu.data.sources.load_raw_interactions`), build its sequences, and save them
    to ``output_dir`` (atomically) and/or push them to the Hub dataset repo ``push_to_hub``.

    Filters left unset in ``config`` (None) take the dataset's defaults (:func:`default_filters`).

    Args:
        errors: ``"raise"`` on the first malformed row (naming file and line), or ``"skip"`` to drop and count them.
        timestamp_unit: unit of numeric timestamps: None (default) for whole unix seconds (a fraction of a second,
            or a value after the year 5000, is then an error naming file, line and column), or ``"s"``, ``"ms"``,
            ``"us"`` to convert them (floored to the second).
        memory_budget_mb: stream instead of loading everything: read in chunks, sort externally and write the
            splits shard by shard, with peak memory following this budget rather than the data (see
            :mod:`hf_hstu.data.streaming`; needs ``output_dir``). None: in memory.
        item_table: where the item features come from (:mod:`~hf_hstu.data.item_features`); kept beside the splits.
    """
    if output_dir is not None:
        _check_output(Path(output_dir), overwrite)
    config = config or PreprocessingConfig()
    config = replace(config, **{k: v for k, v in default_filters(dataset).items() if getattr(config, k) is None})
    reading = dict(
        raw_dir=raw_dir,
        raw_path=raw_path,
        cache_dir=cache_dir,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        delimiter=delimiter,
        errors=errors,
        timestamp_unit=timestamp_unit,
    )
    if memory_budget_mb is not None:
        from .streaming import StreamingBudget, build_sequences_streaming  # built on this module's helpers

        if output_dir is None:
            raise ValueError("streaming preprocessing (memory_budget_mb) writes its result to output_dir: pass one")
        chunks = InteractionChunks(
            dataset, **reading, chunk_bytes=StreamingBudget.from_megabytes(memory_budget_mb).chunk_bytes
        )
        data = build_sequences_streaming(
            chunks,
            output_dir,
            config,
            dataset,
            memory_budget_mb=memory_budget_mb,
            save_format=save_format,
            overwrite=overwrite,
            item_table=None
            if item_table is None or item_table.item_table is None
            else functools.partial(
                item_features_for,
                dataset=dataset,
                config=item_table,
                raw_dir=raw_dir,
                raw_path=raw_path,
                cache_dir=cache_dir,
            ),
        )
        if push_to_hub:
            data.push_to_hub(push_to_hub, private=private)
        logger.info("%s: %s", dataset, {k: data.metadata[k] for k in ("num_users", "num_items", "num_interactions")})
        return data
    with progress(total=3, desc=f"{dataset}: parse", unit="step") as phases:
        interactions = [load_raw_interactions(dataset, **reading)]  # a list: build_sequences can free the frame
        phases.update()
        phases.set_description(f"{dataset}: sort, filter, group")
        data = build_sequences(interactions.pop(), config, dataset_name=dataset)
        if item_table is not None and item_table.item_table is not None:
            attach_item_features(data, dataset, item_table, raw_dir, raw_path, cache_dir)
        phases.update()
        phases.set_description(f"{dataset}: save")
        if output_dir is not None:
            data.save(output_dir, format=save_format, overwrite=overwrite)
        if push_to_hub:
            data.push_to_hub(push_to_hub, private=private)
        phases.update()
    logger.info("%s: %s", dataset, {k: data.metadata[k] for k in ("num_users", "num_items", "num_interactions")})
    return data


def load_sequences(path: PathLike) -> datasets.DatasetDict:
    """Load preprocessed sequences: a ``save_to_disk`` folder, a folder of ``<split>.parquet`` files, or a Hub
    dataset repo id. The vocabularies are beside them (:meth:`ItemVocabulary.load`)."""
    folder = Path(path)
    if (folder / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(folder))
    if folder.is_dir():
        files = {split: str(folder / f"{split}.parquet") for split in ("train", "validation", "test")}
        files = {split: file for split, file in files.items() if os.path.isfile(file)}
        if not files:
            raise FileNotFoundError(f"{folder} holds neither a saved DatasetDict nor <split>.parquet files")
        # one split at a time: the train split has no target columns, so the splits do not share one schema
        return datasets.DatasetDict({split: datasets.Dataset.from_parquet(file) for split, file in files.items()})
    if folder.exists() or str(path).count("/") != 1:
        raise FileNotFoundError(f"No preprocessed dataset at {path}")
    try:
        loaded = datasets.load_dataset(str(path))
    except OSError as error:  # not on the Hub either (FileNotFoundError), or offline (ConnectionError)
        raise FileNotFoundError(f"No preprocessed dataset at {path}, locally or as a Hub dataset: {error}") from error
    if "train" in loaded:  # drop the null target columns SequenceData.push_to_hub gave the train split
        train = loaded["train"]
        empty = [name for name in train.column_names if name.startswith("target_") and _all_null(train, name)]
        loaded["train"] = train.remove_columns(empty)
    return loaded


def _all_null(dataset: datasets.Dataset, column: str) -> bool:
    return dataset.data.column(column).null_count == dataset.num_rows
