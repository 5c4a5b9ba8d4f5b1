"""Preprocessing in bounded memory: the sequences of :func:`~hf_hstu.data.preprocessing.build_sequences`, for logs
that do not fit in memory.

Peak memory follows ``memory_budget_mb``, not the data: per-event data is only ever held a chunk or a user range
at a time; what grows with the data is O(users + items) (vocabularies and counts, about 50 bytes per user and item;
string ids cost more). Work files go to a temporary folder beside the output (about 3x the size of the parsed
events), removed at the end. The passes:

1. **read**: the source chunk by chunk (:class:`~hf_hstu.data.sources.InteractionChunks`: the readers' checks and
   messages, file and line), ``min_rating`` applied; each chunk is spilled to an Arrow file, and the distinct users
   (with their event counts) and items kept. Every pass keeps the file order of the rows (the stable sort's
   tie-breaker).
2. **partition** (an external distribution sort): users numbered in sorted raw-id order (the vocabulary order) and
   cut into contiguous ranges of at most ``partition_rows`` events; the spilled chunks are scattered to their
   ranges' files. Every user's events land in one range, so a range is sorted in memory by (user, time,
   file order), and the ranges in order are the global sort.
3. **filter**: duplicates per range; the filters that need global counts (paper filter, k-core, short sequences)
   as passes over the ranges with per-user and per-item counts, the per-event masks on disk.
4. **write**: the split rows of each range, appended as shards of the output (``save_to_disk`` layout, read back
   memory-mapped; or ``<split>.parquet`` written row group by row group).

The output equals the in-memory path's, split for split and row for row (the tests compare them). One difference
remains past 2**31 events in a split: the in-memory path then writes 64-bit list offsets, this one 32-bit offsets
per shard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.arrow_writer import ArrowWriter

from ..progress import quiet_library_progress_bars
from .download import staging_dir_beside
from .item_features import save_item_features
from .preprocessing import (
    _MIN_EVENTS,
    METADATA_FILE,
    PreprocessingConfig,
    SequenceData,
    _check_output,
    _check_splits,
    _duplicate_policy,
    _fingerprint,
    _install,
    _metadata,
    _nothing_left,
    _rating_step,
    _refuse_duplicates,
    _split_tables,
    _stable_order,
    _temporal_cutoffs,
    _warn_kept_duplicates,
    load_sequences,
)
from .sources import InteractionChunks
from .vocabulary import ItemVocabulary, UserVocabulary

logger = logging.getLogger(__name__)

# Working set per event of a user range being sorted, filtered and split (columns, sort keys, split tables).
_BYTES_PER_EVENT = 220
# A chunk of CSV text costs about 9x its size once parsed and checked (typed columns, pandas frame, check masks):
# a chunk gets 1/16 of the budget.
_CHUNK_FACTOR = 16
# Bytes of a record batch of the output's Arrow shards.
_BATCH_BYTES = 16 * 2**20


@dataclasses.dataclass(frozen=True)
class StreamingBudget:
    """What a memory budget allows: chunk sizes for reading and the events of one user range."""

    chunk_bytes: int
    partition_rows: int

    @classmethod
    def from_megabytes(cls, memory_budget_mb: float) -> StreamingBudget:
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        budget = int(memory_budget_mb * 2**20)
        return cls(chunk_bytes=max(2**16, budget // _CHUNK_FACTOR), partition_rows=max(1, budget // _BYTES_PER_EVENT))


class _DistinctIds:
    """Distinct raw ids with their counts, merged chunk by chunk.

    Integer ids are kept as sorted numpy arrays that each chunk's distinct ids are merged into (transient memory:
    about twice the arrays); once a chunk has string ids, all are kept as strings (``str`` of an integer id is its
    text) and merged with pyarrow's hash aggregation a few chunks at a time.
    """

    def __init__(self):
        self.ids = np.zeros(0, dtype=np.int64)  # sorted, while all ids are integers
        self.counts = np.zeros(0, dtype=np.int64)
        self._text: pa.Table | None = None  # once any id is a string: columns id, count (not sorted)
        self._pending: list[pa.Table] = []

    def add(self, values: pa.ChunkedArray) -> None:
        if self._text is None and not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            ids, counts = np.unique(values.to_numpy(), return_counts=True)
            self._merge_sorted(ids, counts)
            return
        if self._text is None:  # the first string ids: the integers so far become text
            self._text = pa.table({"id": pa.array(self.ids).cast(pa.string()), "count": self.counts})
            self.ids, self.counts = self.ids[:0], self.counts[:0]
        counted = pc.value_counts(values.cast(pa.string()))
        self._pending.append(pa.table({"id": counted.field("values"), "count": counted.field("counts")}))
        if sum(len(table) for table in self._pending) > max(2**21, len(self._text) // 4):
            self._merge_text()

    def _merge_sorted(self, ids: np.ndarray, counts: np.ndarray) -> None:
        at = np.searchsorted(self.ids, ids)
        known = at < len(self.ids)
        known[known] = self.ids[at[known]] == ids[known]
        np.add.at(self.counts, at[known], counts[known])
        self.ids = np.insert(self.ids, at[~known], ids[~known])
        self.counts = np.insert(self.counts, at[~known], counts[~known])

    def _merge_text(self) -> None:
        merged = pa.concat_tables([self._text, *self._pending]).group_by("id").aggregate([("count", "sum")])
        self._text = merged.select(["id", "count_sum"]).rename_columns(["id", "count"])
        self._pending = []

    def sorted(self) -> tuple[pa.Array, np.ndarray]:
        """(ids in vocabulary order: numeric for integers, code-point order for strings; their counts)."""
        if self._text is None:
            return pa.array(self.ids), self.counts
        self._merge_text()
        order = pc.sort_indices(self._text["id"])
        ids, counts = self._text["id"].take(order).combine_chunks(), self._text["count"].take(order).to_numpy()
        self._text = None
        return ids, counts


def _encode(values: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    """int32 codes (0-based positions in the sorted ``vocabulary``) of raw ids that are all in it."""
    if pa.types.is_string(vocabulary.type):
        return pc.index_in(values.cast(pa.string()), value_set=vocabulary).to_numpy().astype(np.int32)
    return np.searchsorted(vocabulary.to_numpy(), values.to_numpy()).astype(np.int32)


class _Partitions:
    """The user ranges: event columns sorted by (user, time, file order) and the mask of kept events, as .npy files."""

    def __init__(self, folder: Path, bounds: np.ndarray, has_ratings: bool):
        self.folder = folder
        self.bounds = bounds  # (P + 1,) first user code of each range, then num_users
        self.columns = ["user", "item", "timestamp"] + (["rating"] if has_ratings else [])

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def path(self, index: int, column: str) -> Path:
        return self.folder / f"{index:05d}-{column}.npy"

    def load(self, index: int, *columns: str) -> list[np.ndarray]:
        return [np.load(self.path(index, column)) for column in columns]

    def save(self, index: int, **arrays: np.ndarray) -> None:
        for column, values in arrays.items():
            np.save(self.path(index, column), values)

    def masks(self, update: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> int:
        """Apply ``update(users, items, keep) -> keep`` to every range's kept events; returns how many it dropped."""
        dropped = 0
        for index in range(len(self)):
            users, items, keep = self.load(index, "user", "item", "keep")
            updated = update(users, items, keep)
            dropped += int(keep.sum()) - int(updated.sum())
            self.save(index, keep=updated)
        return dropped


class _Clock:
    """Seconds between laps and the peak RSS so far, written to ``timings`` (when given) under each lap's name."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings, self.last = timings, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.timings is not None:
            self.timings[f"{name}_s"] = round(now - self.last, 3)
            self.timings[f"{name}_peak_rss_mb"] = round(peak_mb)  # the process's peak so far
        logger.info("streaming preprocessing: %s in %.1f s (peak RSS so far %.0f MB)", name, now - self.last, peak_mb)
        self.last = now


def _at_least(
    k: int, user_counts: np.ndarray, item_counts: np.ndarray | None = None
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """A mask update keeping the events whose user (and item, when ``item_counts`` is given) has >= k events."""

    def update(users: np.ndarray, items: np.ndarray, keep: np.ndarray) -> np.ndarray:
        keep = keep & (user_counts[users] >= k)
        return keep if item_counts is None else keep & (item_counts[items] >= k)

    return update


def _counts(partitions: _Partitions, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept events per user and per item."""
    user_counts = np.zeros(num_users, dtype=np.int64)
    item_counts = np.zeros(num_items, dtype=np.int64)
    for index in range(len(partitions)):
        users, items, keep = partitions.load(index, "user", "item", "keep")
        user_counts += np.bincount(users[keep], minlength=num_users)
        item_counts += np.bincount(items[keep], minlength=num_items)
    return user_counts, item_counts


def _kth_timestamp(partitions: _Partitions, rank: int, low: int, high: int) -> int:
    """The ``rank``-th (0-based) kept timestamp in sorted order, by histograms that narrow [low, high] each pass."""
    below = 0  # kept timestamps < low
    while low < high:
        bins = min(high - low + 1, 2**20)
        width = -(-(high - low + 1) // bins)
        histogram = np.zeros(bins, dtype=np.int64)
        for index in range(len(partitions)):
            timestamps, keep = partitions.load(index, "timestamp", "keep")
            timestamps = timestamps[keep]
            timestamps = timestamps[(timestamps >= low) & (timestamps <= high)]
            histogram += np.bincount((timestamps - low) // width, minlength=bins)
        cumulative = np.cumsum(histogram)
        found = int(np.searchsorted(cumulative, rank - below, side="right"))
        below += int(cumulative[found - 1]) if found else 0
        low, high = low + found * width, min(high, low + (found + 1) * width - 1)
    return low


class _SplitWriter:
    """Appends split tables as the shards of a ``save_to_disk`` folder or one ``<split>.parquet`` file per split."""

    def __init__(self, folder: Path, format: Literal["arrow", "parquet"]):
        self.folder, self.format = folder, format
        self.shards: dict[str, list[Path]] = {}
        self.num_rows: dict[str, int] = {}
        self.schemas: dict[str, pa.Schema] = {}
        self._parquet: dict[str, pq.ParquetWriter] = {}

    def write(self, split: str, table: pa.Table) -> None:
        self.num_rows[split] = self.num_rows.get(split, 0) + table.num_rows
        self.schemas.setdefault(split, table.schema)
        if table.num_rows == 0:
            return
        if self.format == "parquet":
            if split not in self._parquet:
                schema = datasets.Features.from_arrow_schema(table.schema).arrow_schema  # with datasets' features
                self._parquet[split] = pq.ParquetWriter(self.folder / f"{split}.parquet", schema)
            self._parquet[split].write_table(table.cast(self._parquet[split].schema))
            return
        shards = self.shards.setdefault(split, [])
        shards.append(self.folder / split / f"shard-{len(shards)}.arrow")
        shards[-1].parent.mkdir(parents=True, exist_ok=True)
        writer = ArrowWriter(path=str(shards[-1]))
        # record batches of ~_BATCH_BYTES, not datasets' 1,000 rows: reading a memory-mapped shard back maps in the
        # pages around every batch's header (the kernel's fault-around, 64 KiB), 20% of the file with 1,000 rows
        writer.write_table(table, writer_batch_size=max(1, table.num_rows * _BATCH_BYTES // max(1, table.nbytes)))
        writer.finalize()
        writer.close()

    def close(self, description: str) -> None:
        """Finish the files: the parquet footers, or the shards' names and the JSON files ``load_from_disk`` reads
        (as ``Dataset.save_to_disk`` writes them)."""
        for writer in self._parquet.values():
            writer.close()
        if self.format == "parquet":
            return
        for split in self.num_rows:
            shards = self.shards[split]
            names = [f"data-{index:05d}-of-{len(shards):05d}.arrow" for index in range(len(shards))]
            for shard, name in zip(shards, names, strict=True):
                shard.replace(shard.with_name(name))
            state = {
                "_data_files": [{"filename": name} for name in names],
                "_fingerprint": _fingerprint(split, description, self.schemas[split]),
                "_format_columns": None,
                "_format_kwargs": {},
                "_format_type": None,
                "_output_all_columns": False,
                "_split": split,
            }
            (self.folder / split / datasets.config.DATASET_STATE_JSON_FILENAME).write_text(
                json.dumps(state, indent=2, sort_keys=True), encoding="utf-8"
            )
            features = datasets.Features.from_arrow_schema(self.schemas[split])
            info = dataclasses.asdict(datasets.DatasetInfo(description=description, features=features))
            (self.folder / split / datasets.config.DATASET_INFO_FILENAME).write_text(
                json.dumps({key: info[key] for key in sorted(info)}, indent=2), encoding="utf-8"
            )
        (self.folder / datasets.config.DATASETDICT_JSON_FILENAME).write_text(
            json.dumps({"splits": list(self.num_rows)}), encoding="utf-8"
        )


def build_sequences_streaming(
    chunks: InteractionChunks,
    output_dir: str | Path,
    config: PreprocessingConfig | None = None,
    dataset_name: str = "custom",
    *,
    memory_budget_mb: float = 512,
    save_format: Literal["arrow", "parquet"] = "arrow",
    overwrite: bool = False,
    timings: dict[str, float] | None = None,
    item_table: Callable[[ItemVocabulary, dict], tuple[datasets.Dataset, ItemVocabulary]] | None = None,
) -> SequenceData:
    """Build the sequences of :func:`~hf_hstu.data.preprocessing.build_sequences` from ``chunks`` (an
    :class:`~hf_hstu.data.sources.InteractionChunks`) in bounded memory and save them to ``output_dir`` (atomically,
    as :meth:`SequenceData.save` does); the returned dataset is read back from there, memory-mapped.

    ``timings``, when given, receives the seconds of each pass (read, partition, filter, write) and the peak RSS at
    its end, for benchmarks. ``item_table`` (the item vocabulary, the metadata) -> (the item table, the item
    vocabulary), e.g. :func:`~hf_hstu.data.item_features.item_features_for` with its source bound, builds the item
    table saved beside the splits (it holds one row per item, not per event: it fits in memory).
    """
    config = config or PreprocessingConfig()
    budget = StreamingBudget.from_megabytes(memory_budget_mb)
    output = Path(output_dir)
    _check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir_beside(output)
    try:
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.work-") as work:
            metadata, vocabularies = _stream(
                chunks, Path(work), staging, config, dataset_name, budget, save_format, _Clock(timings)
            )
        item_vocabulary, user_vocabulary = vocabularies
        items = None
        if item_table is not None:
            items, item_vocabulary = item_table(item_vocabulary, metadata)
            with quiet_library_progress_bars():
                save_item_features(items, staging, save_format)
        item_vocabulary.save(staging)
        user_vocabulary.save(staging)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        _install(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    with quiet_library_progress_bars():
        dataset = load_sequences(output)
    return SequenceData(dataset, item_vocabulary, user_vocabulary, metadata, items)


def _stream(
    chunks: InteractionChunks,
    work: Path,
    staging: Path,
    config: PreprocessingConfig,
    dataset_name: str,
    budget: StreamingBudget,
    save_format: Literal["arrow", "parquet"],
    clock: _Clock,
) -> tuple[dict, tuple[ItemVocabulary, UserVocabulary]]:
    # 1. read: spill the chunks in order, count the distinct users and items
    users_seen, items_seen = _DistinctIds(), _DistinctIds()
    spills: list[Path] = []
    num_raw = kept_rows = 0
    has_ratings = None
    below_min_rating = 0
    for frame in chunks:
        if has_ratings is None:
            has_ratings = "rating" in frame.columns
            if config.min_rating is not None and not has_ratings:
                raise ValueError(f"min_rating={config.min_rating} needs ratings, but {dataset_name} has none")
        num_raw += len(frame)
        if config.min_rating is not None:
            below = frame["rating"].to_numpy() < config.min_rating
            below_min_rating += int(below.sum())
            frame = frame[~below]
        table = pa.table(
            {
                "user": pa.array(frame["user_id"]),
                "item": pa.array(frame["item_id"]),
                "timestamp": pa.array(frame["timestamp"].to_numpy(dtype=np.int64)),
                **({"rating": pa.array(frame["rating"].to_numpy(dtype=np.float64))} if has_ratings else {}),
            }
        )
        kept_rows += len(frame)
        del frame
        users_seen.add(table["user"])
        items_seen.add(table["item"])
        spills.append(work / f"chunk-{len(spills):05d}.arrow")
        with pa.OSFile(str(spills[-1]), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        del table
        pa.default_memory_pool().release_unused()  # give the chunk's buffers back before the next one
    if num_raw == 0:
        raise ValueError(f"{chunks.source}: no interactions to preprocess")
    dropped = {"malformed": sum(chunks.skipped_rows.values())}
    if config.min_rating is not None:
        dropped["below_min_rating"] = below_min_rating
    if kept_rows == 0:
        raise ValueError(f"{dataset_name}: no interactions left after min_rating={config.min_rating}")
    user_ids, events_per_user = users_seen.sorted()
    item_ids, _ = items_seen.sorted()
    num_users, num_items = len(user_ids), len(item_ids)

    clock.lap("read")
    # 2. partition: contiguous user ranges of at most partition_rows events (one user may exceed it alone)
    ends = np.cumsum(events_per_user)
    bounds = [0]
    while bounds[-1] < num_users:
        limit = (ends[bounds[-1] - 1] if bounds[-1] else 0) + budget.partition_rows
        bounds.append(max(bounds[-1] + 1, int(np.searchsorted(ends, limit, side="right"))))
    del ends, events_per_user
    partitions = _Partitions(work, np.asarray(bounds, dtype=np.int64), bool(has_ratings))
    _scatter(spills, partitions, user_ids, item_ids)
    clock.lap("partition")

    # 3. filter: duplicates per range, then the filters needing global counts
    exact_duplicates = dropped_duplicates = 0
    for index in range(len(partitions)):
        table = _read_stream(work / f"{index:05d}.arrows")
        users, items, timestamps = (table[name].to_numpy() for name in ("user", "item", "timestamp"))
        order = _stable_order(users, timestamps)  # rows arrive in file order: ties keep it
        columns = {name: table[name].to_numpy()[order] for name in partitions.columns}
        del table, users, items, timestamps, order
        keep, repeated = _duplicate_policy(
            columns["user"], columns["item"], columns["timestamp"], config.duplicates, num_items
        )
        if repeated.any() and config.duplicates == "error":
            row = int(np.argmax(repeated))
            total = int(repeated.sum()) + exact_duplicates + _count_remaining_duplicates(partitions, index + 1)
            user, item = user_ids[columns["user"][row]].as_py(), item_ids[columns["item"][row]].as_py()
            _refuse_duplicates(chunks.source, total, user, item, int(columns["timestamp"][row]))
        exact_duplicates += int(repeated.sum())
        dropped_duplicates += int((~keep).sum())
        partitions.save(index, keep=keep, **columns)
        (work / f"{index:05d}.arrows").unlink()
    if config.duplicates == "keep":
        _warn_kept_duplicates(chunks.source, exact_duplicates)
    else:
        dropped["duplicates"] = dropped_duplicates
    if config.paper_filter:
        k = config.paper_filter
        user_counts, item_counts = _counts(partitions, num_users, num_items)
        dropped["paper_filter"] = partitions.masks(_at_least(k, user_counts, item_counts))
        user_counts, _ = _counts(partitions, num_users, num_items)
        dropped["paper_filter"] += partitions.masks(_at_least(k, user_counts))
    if config.k_core:
        k, dropped["k_core"] = config.k_core, 0
        while True:
            user_counts, item_counts = _counts(partitions, num_users, num_items)
            removed = partitions.masks(_at_least(k, user_counts, item_counts))
            dropped["k_core"] += removed
            if not removed:
                break
    user_counts, _ = _counts(partitions, num_users, num_items)
    min_events = _MIN_EVENTS[config.split]
    dropped["short_sequences"] = partitions.masks(_at_least(min_events, user_counts))
    user_counts, item_counts = _counts(partitions, num_users, num_items)
    num_interactions = int(user_counts.sum())
    if num_interactions == 0:
        _nothing_left(dataset_name, num_raw, config, dropped)

    # vocabularies of the users and items left, numbered as before (sorted raw ids)
    used_users, used_items = user_counts > 0, item_counts > 0
    user_map, item_map = np.cumsum(used_users) - 1, np.cumsum(used_items) - 1  # old code -> new 0-based code
    user_vocabulary = UserVocabulary(user_ids.filter(pa.array(used_users)).to_numpy(zero_copy_only=False))
    item_vocabulary = ItemVocabulary(item_ids.filter(pa.array(used_items)).to_numpy(zero_copy_only=False))
    del user_ids, item_ids, user_counts, item_counts
    low, high, rating_step = None, None, None
    for index in range(len(partitions)):
        timestamps, keep = partitions.load(index, "timestamp", "keep")
        if keep.any():
            low = min(low if low is not None else 2**63, int(timestamps[keep].min()))
            high = max(high if high is not None else -1, int(timestamps[keep].max()))
            if has_ratings:
                (ratings,) = partitions.load(index, "rating")
                rating_step = min(rating_step or 1.0, _rating_step(ratings[keep]))
    cutoffs = {}
    if config.split == "temporal":

        def cutoff(fraction_after: float) -> int:
            rank = min(int(np.ceil((num_interactions - 1) * (1 - fraction_after))), num_interactions - 1)
            return _kth_timestamp(partitions, rank, low, high)

        cutoffs = _temporal_cutoffs(config, cutoff)

    clock.lap("filter")
    # 4. write: the split rows of each range, in user order
    writer = _SplitWriter(staging, save_format)
    for index in range(len(partitions)):
        *loaded, keep = partitions.load(index, *partitions.columns, "keep")
        columns = dict(zip(partitions.columns, loaded, strict=True))
        del loaded
        first, last = partitions.bounds[index], partitions.bounds[index + 1]
        first_user = int(user_map[first - 1] + 1) if first else 0  # new code of the range's first kept user
        num_range_users = int(used_users[first:last].sum())
        events = {
            "item_ids": item_map[columns["item"][keep]].astype(np.int64) + 1,
            "timestamps": columns["timestamp"][keep],
        }
        if has_ratings:
            events["ratings"] = np.rint(columns["rating"][keep] / rating_step).astype(np.int64)
        local_users = (user_map[columns["user"][keep]] - first_user).astype(np.int64)
        del columns, keep
        for split, table in _split_tables(
            events, local_users, num_range_users, config.split, cutoffs, first_user
        ).items():
            writer.write(split, table)
        del events, local_users, table
        pa.default_memory_pool().release_unused()
    _check_splits(dataset_name, config, cutoffs, writer.num_rows)
    metadata = _metadata(
        dataset_name,
        chunks.source,
        config,
        num_users=len(user_vocabulary),
        num_items=len(item_vocabulary),
        num_interactions=num_interactions,
        num_rows=dict(writer.num_rows),
        has_ratings=bool(has_ratings),
        rating_step=rating_step,
        timestamp_range=[low, high],
        cutoffs=cutoffs,
        raw_interactions=num_raw,
        dropped=dropped,
        skipped_rows=chunks.skipped_rows,
        exact_duplicates=exact_duplicates,
        source_check=chunks.source_check,
    )
    writer.close(json.dumps(metadata))
    clock.lap("write")
    return metadata, (item_vocabulary, user_vocabulary)


def _scatter(spills: list[Path], partitions: _Partitions, user_ids: pa.Array, item_ids: pa.Array) -> None:
    """Encode the spilled chunks' users and items and append each row to its user range's stream file."""
    writers: list[pa.ipc.RecordBatchStreamWriter] = []
    for spill in spills:
        with pa.OSFile(str(spill), "rb") as source:
            table = pa.ipc.open_file(source).read_all()
        users = _encode(table["user"].combine_chunks(), user_ids)
        items = _encode(table["item"].combine_chunks(), item_ids)
        ranges = np.searchsorted(partitions.bounds, users, side="right") - 1
        order = np.argsort(ranges, kind="stable")
        encoded = pa.table(
            {
                "user": users[order],
                "item": items[order],
                **{name: table[name].take(order) for name in ("timestamp", "rating") if name in table.column_names},
            }
        )
        del table, users, items
        if not writers:
            writers = [
                pa.ipc.new_stream(pa.OSFile(str(partitions.folder / f"{index:05d}.arrows"), "wb"), encoded.schema)
                for index in range(len(partitions))
            ]
        starts = np.searchsorted(ranges[order], np.arange(len(partitions) + 1))
        for index in np.flatnonzero(np.diff(starts)):
            writers[index].write_table(encoded.slice(starts[index], starts[index + 1] - starts[index]))
        spill.unlink()
    for writer in writers:
        writer.close()


def _read_stream(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_stream(source).read_all()


def _count_remaining_duplicates(partitions: _Partitions, start: int) -> int:
    """Exact duplicates in the user ranges from ``start`` on (for the message refusing them: the total)."""
    total = 0
    for index in range(start, len(partitions)):
        table = _read_stream(partitions.folder / f"{index:05d}.arrows")
        users, items, timestamps = (table[name].to_numpy() for name in ("user", "item", "timestamp"))
        order = _stable_order(users, timestamps)
        total += int(_duplicate_policy(users[order], items[order], timestamps[order], "keep", 1)[1].sum())
    return total
