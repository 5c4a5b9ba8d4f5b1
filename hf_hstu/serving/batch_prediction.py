"""Offline batch prediction: the top-k items of every user of a histories file, in raw ids, in bounded memory.

`recommend_file` reads raw events (a Parquet or CSV file with user, item and timestamp columns) with the package's
checked reader (`hf_hstu.data.read_interactions`: a missing column, an empty file, a non-integer timestamp... is an
error naming the file, row or line and field, or with ``errors="skip"`` a dropped and counted row), maps raw item ids
through the checkpoint's vocabulary, streams users in batches through `embed_users` and a top-k over the whole
catalogue, and writes one Parquet file of (user, rank, item, score) in raw ids, with a JSON summary beside it.

- Unknown item ids are left out of the histories, counted per user and reported in the summary; a user left with no
  known item gets no recommendation and is listed there, never dropped silently.
- A user's rows must be in time order (as a history is read oldest first); otherwise an error names the user and
  the rows, unless ``sort_by_time`` sorts each user's events (stable, by timestamp) and counts the users reordered.
- Top-k runs chunk by chunk over the catalogue (`top_k_items`, exact), so memory does not grow with the number of
  items beyond the item table itself; ``index="faiss"`` searches an approximate inner-product index (IVF) instead
  (dot-product models, where faiss is installed).
- Under `accelerate launch` each process takes a contiguous shard of the users and writes its own Parquet part; the
  main process then concatenates the parts in order into the output, which therefore equals a single-process run's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data._segments import concat_ranges, offsets_from_lengths
from ..data.sources import read_interactions
from ..data.vocabulary import ItemVocabulary
from ..modeling.modeling_recommender import SequentialRecommenderPreTrainedModel
from ..modeling.retrieval import top_k_items
from ..progress import PhaseProgress

logger = logging.getLogger(__name__)

INDEXES = ("exact", "faiss")
LAST_EVENT = "last_event"


@dataclass
class BatchPredictionArguments:
    """Arguments of `scripts/recommend.py` (and `recommend_file`)."""

    model: str = field(metadata={"help": "Checkpoint folder or Hub model id (with its item_vocabulary.json)."})
    input: str = field(metadata={"help": "Histories: a Parquet or CSV file with user, item and timestamp columns."})
    output: str = field(metadata={"help": "Parquet file to write: user, rank, item, score (raw ids)."})
    k: int = field(default=100, metadata={"help": "Recommendations per user."})
    batch_size: int = field(default=256, metadata={"help": "Users encoded and ranked together."})
    user_col: str = field(default="user")
    item_col: str = field(default="item")
    time_col: str = field(default="timestamp")
    rating_col: str | None = field(default=None, metadata={"help": "Ratings column (rated input preprocessors)."})
    timestamp_unit: str | None = field(default=None, metadata={"help": "s, ms or us when not whole unix seconds."})
    errors: str = field(default="raise", metadata={"help": "raise: stop at a malformed row; skip: drop and count."})
    sort_by_time: bool = field(
        default=False, metadata={"help": "Sort each user's events by time instead of refusing rows out of order."}
    )
    request_time: str | None = field(
        default=None,
        metadata={
            "help": "When the users are served, for models with a time bias: unix seconds (all users), or "
            "'last_event' (each user's last event)."
        },
    )
    filter_seen: bool = field(default=True, metadata={"help": "Never recommend an item of the user's history."})
    index: str = field(default="exact", metadata={"help": "exact (chunked exact top-k) or faiss (approximate)."})
    nlist: int | None = field(default=None, metadata={"help": "faiss: inverted lists (default sqrt(items))."})
    nprobe: int = field(default=32, metadata={"help": "faiss: lists searched per user."})
    summary: str | None = field(default=None, metadata={"help": "Summary JSON (default: <output stem>.summary.json)."})
    revision: str | None = field(default=None)
    trust_remote_code: bool = field(default=False)

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size < 1:
            raise ValueError(f"k and batch_size must be positive, got k={self.k}, batch_size={self.batch_size}.")
        if self.index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {self.index!r}.")
        if self.errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {self.errors!r}.")
        if self.request_time not in (None, LAST_EVENT) and not str(self.request_time).lstrip("+").isdigit():
            raise ValueError(f"request_time must be whole unix seconds or {LAST_EVENT!r}, got {self.request_time!r}.")

    def summary_path(self) -> Path:
        output = Path(self.output)
        return Path(self.summary) if self.summary else output.with_name(f"{output.stem}.summary.json")


@dataclass
class Histories:
    """Every user's known events, grouped by user (users in order of first appearance), events in time order.

    `offsets` (U + 1,) delimit user u's events `item_ids[offsets[u]:offsets[u + 1]]` (model ids 1..num_items).
    """

    users: np.ndarray  # (U,) raw user ids
    offsets: np.ndarray  # (U + 1,) int64
    item_ids: np.ndarray  # (E,) int64
    timestamps: np.ndarray  # (E,) int64
    ratings: np.ndarray | None  # (E,) int64
    report: dict

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _row_name(path: Path, position: int) -> str:
    """How the reader names a row: the line of a text file (header on line 1), the 0-based row of a Parquet file."""
    return f"row {position}" if ".parquet" in [s.lower() for s in path.suffixes] else f"line {position + 2}"


def _raw_id(value) -> object:
    return value.item() if isinstance(value, np.generic) else value


def read_histories(
    path: str | os.PathLike,
    vocabulary: ItemVocabulary,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "timestamp",
    rating_col: str | None = None,
    errors: str = "raise",
    timestamp_unit: str | None = None,
    sort_by_time: bool = False,
) -> Histories:
    """Read and check raw events, map items through `vocabulary` and group them by user (see the module docstring).

    The report (`Histories.report`) counts rows, skipped rows by reason, unknown item events per user and users
    without a known item.
    """
    path = Path(path)
    frame = read_interactions(
        path,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        errors=errors,
        timestamp_unit=timestamp_unit,
    )
    skipped = dict(frame.attrs.get("skipped_rows", {}))
    codes, users = pd.factorize(frame["user_id"], sort=False)  # users in order of first appearance
    timestamps = frame["timestamp"].to_numpy(dtype=np.int64)
    order = np.argsort(codes, kind="stable")  # each user's rows in file order
    same_user = codes[order][1:] == codes[order][:-1]
    backwards = np.flatnonzero(same_user & (timestamps[order][1:] < timestamps[order][:-1]))
    reordered = 0
    if len(backwards):
        if not sort_by_time:
            earlier, later = int(order[backwards[0]]), int(order[backwards[0] + 1])
            where = (
                f"{_row_name(path, later)} ({time_col} {timestamps[later]}) comes after "
                f"{_row_name(path, earlier)} ({time_col} {timestamps[earlier]})"
                if not skipped
                else f"{time_col} {timestamps[later]} comes after {timestamps[earlier]}"
            )
            raise ValueError(
                f"{path}: the events of {user_col} {_raw_id(users[codes[later]])!r} are out of time order: {where}. "
                "Sort the file by user and time, or pass sort_by_time (--sort_by_time true) to sort each user's "
                "events by time."
            )
        reordered = len(np.unique(codes[order][backwards]))
        order = np.lexsort((timestamps, codes))  # stable: equal times keep their file order

    item_values = frame["item_id"]
    if vocabulary.id_type == "str" and pd.api.types.is_integer_dtype(item_values.dtype):
        item_values = item_values.astype(str)  # the reader turned all-integer strings into integers
    item_ids = vocabulary.lookup(item_values.to_numpy()[order])
    known = item_ids != 0
    user_of_event = codes[order]
    unknown_per_user = np.bincount(user_of_event[~known], minlength=len(users))
    known_per_user = np.bincount(user_of_event[known], minlength=len(users))
    unknown_ids = pd.unique(item_values.to_numpy()[order][~known])
    report = {
        "input": str(path),
        "rows": len(frame) + sum(skipped.values()),
        "skipped_rows": skipped,
        "users": len(users),
        "events": len(frame),
        "unknown_item_events": int((~known).sum()),
        "unknown_item_ids": len(unknown_ids),
        "unknown_item_id_examples": [_raw_id(value) for value in unknown_ids[:10]],
        "unknown_items_per_user": {
            str(_raw_id(users[u])): int(unknown_per_user[u]) for u in np.flatnonzero(unknown_per_user)
        },
        "users_without_known_items": [_raw_id(users[u]) for u in np.flatnonzero(known_per_user == 0)],
        "users_reordered_by_time": reordered,
    }
    ratings = None
    if rating_col is not None:
        ratings = frame["rating"].to_numpy()[order][known]
        if not np.all(ratings == np.round(ratings)):
            raise ValueError(f"{path}: column {rating_col!r} holds ratings that are not whole numbers.")
        ratings = ratings.astype(np.int64)
    return Histories(
        users=np.asarray(users),
        offsets=offsets_from_lengths(known_per_user),
        item_ids=item_ids[known],
        timestamps=timestamps[order][known],
        ratings=ratings,
        report=report,
    )


def _padded(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """(len(rows), longest) right-padded int64 tensor of the segments `rows` of `values`."""
    lengths = offsets[rows + 1] - offsets[rows]
    padded = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
    columns = np.arange(padded.shape[1])
    mask = columns < lengths[:, None]
    padded[mask] = values[concat_ranges(offsets[rows], lengths)]
    return torch.from_numpy(padded)


class ApproximateIndex:
    """An inverted-file inner-product index (faiss `IndexIVFFlat`) over the item table, for dot-product models:
    `nlist` k-means cells, `nprobe` of them searched per user."""

    def __init__(self, item_table: torch.Tensor, nlist: int | None = None, nprobe: int = 32, seed: int = 0) -> None:
        try:
            import faiss
        except ImportError as error:
            raise ImportError("index='faiss' needs faiss: pip install faiss-cpu (or hf_hstu[faiss]).") from error
        vectors = np.ascontiguousarray(item_table[1:].detach().float().cpu().numpy())  # row 0 is padding
        num_items, dim = vectors.shape
        self.nlist = nlist or max(1, min(int(math.sqrt(num_items)), num_items // 39))
        self.nprobe = min(nprobe, self.nlist)
        quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        training = vectors
        if num_items > 64 * self.nlist:  # enough for k-means, and much faster than all items
            training = vectors[np.random.default_rng(seed).choice(num_items, 64 * self.nlist, replace=False)]
        self.index.cp.seed = seed
        self.index.train(training)
        self.index.add(vectors)
        self.index.nprobe = self.nprobe
        self._quantizer = quantizer  # the index refers to it

    def search(self, user_embeddings: torch.Tensor, k: int, exclude_ids: torch.Tensor | None) -> list[tuple]:
        """Per user, (item ids 1..num_items, scores) of the (up to) k best found, `exclude_ids` (B, N) left out."""
        extra = int((exclude_ids != 0).sum(1).max()) if exclude_ids is not None else 0
        scores, positions = self.index.search(np.ascontiguousarray(user_embeddings.float().cpu().numpy()), k + extra)
        results = []
        for row in range(positions.shape[0]):
            found = positions[row] >= 0
            ids, row_scores = positions[row][found] + 1, scores[row][found]
            if exclude_ids is not None:
                keep = ~np.isin(ids, exclude_ids[row].numpy())
                ids, row_scores = ids[keep], row_scores[keep]
            results.append((ids[:k], row_scores[:k]))
        return results


def _output_schema(histories: Histories, vocabulary: ItemVocabulary) -> pa.Schema:
    user_type = pa.int64() if pd.api.types.is_integer_dtype(histories.users.dtype) else pa.string()
    item_type = pa.int64() if vocabulary.id_type == "int" else pa.string()
    return pa.schema([("user", user_type), ("rank", pa.int32()), ("item", item_type), ("score", pa.float32())])


def _shard_rows(num_users: int, process_index: int, num_processes: int) -> range:
    """The contiguous block of users of one process (blocks in process order cover all users once)."""
    return range(num_users * process_index // num_processes, num_users * (process_index + 1) // num_processes)


def _batches(rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


@torch.no_grad()
def predict_shard(
    model: SequentialRecommenderPreTrainedModel,
    vocabulary: ItemVocabulary,
    histories: Histories,
    rows: np.ndarray,
    output_file: Path,
    args: BatchPredictionArguments,
    request_times: np.ndarray | None,
    show_progress: bool = True,
) -> dict:
    """Recommend for the users `rows` of `histories` (each with a known item) into the Parquet file `output_file`;
    returns counts for the summary."""
    device = model.item_embeddings.weight.device
    item_table = model.item_table()
    index, build_seconds = None, 0.0
    if args.index == "faiss":
        if model.config.similarity != "dot":
            raise ValueError(f"index='faiss' searches inner products: not for similarity={model.config.similarity!r}.")
        start = time.perf_counter()
        index = ApproximateIndex(item_table, args.nlist, args.nprobe)
        build_seconds = time.perf_counter() - start
        del item_table
    schema = _output_schema(histories, vocabulary)
    written, short_users, encode_seconds, top_k_seconds = 0, 0, 0.0, 0.0
    batches = PhaseProgress(
        _batches(rows, args.batch_size), desc="recommend", disable=not show_progress
    )  # a bar on a terminal, one line in logs
    with pq.ParquetWriter(output_file, schema) as writer:
        for batch_rows in batches:
            input_ids = _padded(histories.item_ids, histories.offsets, batch_rows).to(device)
            timestamps = _padded(histories.timestamps, histories.offsets, batch_rows).to(device)
            ratings = None
            if histories.ratings is not None and model.requires_ratings:
                ratings = _padded(histories.ratings, histories.offsets, batch_rows).to(device)
            targets = None if request_times is None else torch.from_numpy(request_times[batch_rows]).to(device)
            start = time.perf_counter()
            embeddings = model.embed_users(input_ids, input_ids != 0, timestamps, targets, ratings)
            encode_seconds += time.perf_counter() - start
            start = time.perf_counter()
            exclude = input_ids if args.filter_seen else None
            if index is None:
                item_ids, scores = top_k_items(embeddings, item_table, model.similarity, args.k, exclude)
                per_user = list(zip(item_ids.cpu().numpy(), scores.float().cpu().numpy(), strict=True))
            else:
                per_user = index.search(embeddings, args.k, None if exclude is None else exclude.cpu())
            top_k_seconds += time.perf_counter() - start
            counts = np.array([len(ids) for ids, _ in per_user])
            short_users += int((counts < args.k).sum())
            if counts.sum() == 0:
                continue
            table = pa.table(
                {
                    "user": pa.array(np.repeat(histories.users[batch_rows], counts), schema.field("user").type),
                    "rank": pa.array(np.concatenate([np.arange(1, n + 1) for n in counts]), pa.int32()),
                    "item": pa.array(
                        vocabulary.decode(np.concatenate([ids for ids, _ in per_user])), schema.field("item").type
                    ),
                    "score": pa.array(np.concatenate([s for _, s in per_user]).astype(np.float32), pa.float32()),
                },
                schema=schema,
            )
            writer.write_table(table)
            written += table.num_rows
    batches.close()
    return {
        "recommendations": written,
        "users_with_fewer_than_k": short_users,
        "encode_seconds": round(encode_seconds, 2),
        "top_k_seconds": round(top_k_seconds, 2),
        "index_build_seconds": round(build_seconds, 2),
    }


def _request_times(
    model: SequentialRecommenderPreTrainedModel, histories: Histories, args: BatchPredictionArguments
) -> np.ndarray | None:
    """(U,) request time of each user, or None for models without a time bias; an error names a user served before
    their last event."""
    if args.request_time is None:
        if model.requires_target_timestamps:
            raise ValueError(
                "request_time is required: this model conditions on the time of the request (config.use_time_bias="
                f"True). Pass --request_time <unix seconds> (all users) or --request_time {LAST_EVENT}."
            )
        return None
    lengths = histories.lengths
    last = np.zeros(len(lengths), dtype=np.int64)
    has_events = lengths > 0
    last[has_events] = histories.timestamps[histories.offsets[1:][has_events] - 1]
    if args.request_time == LAST_EVENT:
        return last
    request_time = int(args.request_time)
    late = np.flatnonzero(has_events & (last > request_time))
    if len(late):
        raise ValueError(
            f"request_time {request_time} is before the last event of user {_raw_id(histories.users[late[0]])!r} (at "
            f"{last[late[0]]}; {len(late)} users in all): pass a later time, or {LAST_EVENT!r}."
        )
    return np.full(len(lengths), request_time, dtype=np.int64)


def _check_k(model, histories: Histories, args: BatchPredictionArguments) -> None:
    """k must leave enough unseen items for every user."""
    num_items = model.config.num_items
    if args.k > num_items:
        raise ValueError(f"k={args.k} is larger than the catalogue ({num_items} items).")
    if not args.filter_seen:
        return
    users_of_events = np.repeat(np.arange(len(histories.users)), histories.lengths)
    pairs = np.unique(users_of_events * (num_items + 1) + histories.item_ids)  # distinct (user, item) pairs
    distinct = np.bincount(pairs // (num_items + 1), minlength=len(histories.users))
    crowded = np.flatnonzero(distinct > num_items - args.k)
    if len(crowded):
        raise ValueError(
            f"user {_raw_id(histories.users[crowded[0]])!r} has seen {distinct[crowded[0]]} of the {num_items} items: "
            f"fewer than k={args.k} are left to recommend; lower k or pass --filter_seen false."
        )


def merge_parts(parts: list[Path], output: Path) -> int:
    """Concatenate Parquet files (same schema) in order into `output`, row group by row group; returns the rows."""
    rows = 0
    schema = pq.read_schema(parts[0])
    with pq.ParquetWriter(output, schema) as writer:
        for part in parts:
            reader = pq.ParquetFile(part)
            for group in range(reader.num_row_groups):
                table = reader.read_row_group(group)
                writer.write_table(table)
                rows += table.num_rows
    return rows


def recommend_file(args: BatchPredictionArguments) -> dict:
    """Run batch prediction as described in the module docstring; returns the summary (also written to
    `args.summary_path()` by the main process). Under `accelerate launch`, every process calls this."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from ..progress import quiet_library_progress_bars
    from ..recommender import Recommender
    from ..training.launch import check_process_launch

    start = time.perf_counter()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator reads it
    check_process_launch(os.environ, state.num_processes)
    with quiet_library_progress_bars():
        recommender = Recommender.from_pretrained(
            args.model, revision=args.revision, trust_remote_code=args.trust_remote_code
        )
    model = recommender.model.to(state.device).eval()
    if model.requires_ratings and args.rating_col is None:
        raise ValueError(
            f"this model reads ratings (input_preprocessor={model.config.input_preprocessor!r}): pass --rating_col."
        )
    histories = read_histories(
        args.input,
        recommender.vocabulary,
        args.user_col,
        args.item_col,
        args.time_col,
        args.rating_col,
        args.errors,
        args.timestamp_unit,
        args.sort_by_time,
    )
    request_times = _request_times(model, histories, args)
    _check_k(model, histories, args)

    output = Path(args.output)
    parts_dir = output.with_name(f"{output.name}.parts")
    if state.is_main_process:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
        parts_dir.mkdir()
    state.wait_for_everyone()
    shard = _shard_rows(len(histories.users), state.process_index, state.num_processes)
    rows = np.array([row for row in shard if histories.lengths[row] > 0], dtype=np.int64)
    part = parts_dir / f"part-{state.process_index:05d}.parquet"
    counts = predict_shard(
        model, recommender.vocabulary, histories, rows, part, args, request_times, state.is_local_main_process
    )
    part.with_suffix(".json").write_text(json.dumps(counts))
    state.wait_for_everyone()
    summary = {}
    if state.is_main_process:
        parts = [parts_dir / f"part-{index:05d}.parquet" for index in range(state.num_processes)]
        totals = [json.loads(path.with_suffix(".json").read_text()) for path in parts]
        merge_parts(parts, output)
        shutil.rmtree(parts_dir)
        summary = {
            **{name: value for name, value in asdict(args).items() if name in ("model", "output", "k", "index")},
            **histories.report,
            "users_recommended": int((histories.lengths > 0).sum()),
            "recommendations": sum(total["recommendations"] for total in totals),
            "users_with_fewer_than_k": sum(total["users_with_fewer_than_k"] for total in totals),
            "encode_seconds": [total["encode_seconds"] for total in totals],  # per process
            "top_k_seconds": [total["top_k_seconds"] for total in totals],
            "index_build_seconds": [total["index_build_seconds"] for total in totals],
            "request_time": args.request_time,
            "num_processes": state.num_processes,
            "seconds": round(time.perf_counter() - start, 3),
        }
        if summary["unknown_item_events"] or summary["users_without_known_items"]:
            logger.warning(
                "%s: %d events of %d unknown item ids left out; %d users without a known item got no "
                "recommendation (details in %s)",
                args.input,
                summary["unknown_item_events"],
                summary["unknown_item_ids"],
                len(summary["users_without_known_items"]),
                args.summary_path(),
            )
        args.summary_path().write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    state.wait_for_everyone()
    return summary
