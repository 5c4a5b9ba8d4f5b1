"""Streaming preprocessing: the same DatasetDict, vocabularies and record as the in-memory path, in bounded memory."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from data_testing import shared_dataset

from hf_hstu.data import (
    InteractionChunks,
    MalformedInputError,
    ModifiedSourceWarning,
    PreprocessingConfig,
    StreamingBudget,
    UserVocabulary,
    build_sequences_streaming,
    load_sequences,
    preprocess,
    write_ratings_log,
)

OUTPUT_FILES = ("preprocessing.json", "item_vocabulary.json", "user_vocabulary.json")


def assert_same_output(expected: Path, actual: Path) -> None:
    """Two preprocessed folders hold the same splits (schema, features, rows, description) and the same files."""
    left, right = load_sequences(expected), load_sequences(actual)
    assert list(left) == list(right)
    for split in left:
        assert left[split].features == right[split].features, split
        assert left[split].data.table.equals(right[split].data.table), split
        assert left[split].info.description == right[split].info.description, split
    for name in OUTPUT_FILES:
        assert (expected / name).read_text() == (actual / name).read_text(), name


def run_both(tmp_path: Path, dataset: str, config: PreprocessingConfig, chunk_bytes: int, **reading):
    """(in-memory result, streaming result) of the same source, both saved; the streaming one in tiny pieces."""
    in_memory = preprocess(dataset, tmp_path / "in_memory", config=config, **reading)
    chunks = InteractionChunks(dataset, chunk_bytes=chunk_bytes, **reading)
    streamed = build_sequences_streaming(chunks, tmp_path / "streamed", config, dataset, memory_budget_mb=0.01)
    return in_memory, streamed


def write_log(path: Path, num_rows: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A CSV log with string ids (the first rows' ids all read as integers, later ones do not), ties, exact
    duplicates, repeated pairs and half-star ratings."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 300, num_rows)
    items = rng.integers(1, 120, num_rows)
    frame = pd.DataFrame(
        {
            "u": users.astype(str),
            "i": [
                f"b{item:04d}" if row > num_rows // 2 and item % 7 == 0 else str(item) for row, item in enumerate(items)
            ],
            "t": rng.integers(1_000_000, 1_000_400, num_rows),  # many ties
            "r": rng.integers(1, 11, num_rows) / 2,
        }
    )
    frame = pd.concat([frame, frame.iloc[rng.choice(num_rows, 200)]], ignore_index=True)  # exact duplicates
    frame.to_csv(path, index=False)
    return frame


CONFIGS = [
    PreprocessingConfig(),
    PreprocessingConfig(split="paper", duplicates="drop", k_core=4),
    PreprocessingConfig(split="temporal", duplicates="first", min_rating=1.5),
    PreprocessingConfig(split="temporal", duplicates="last", paper_filter=5, validation_fraction=0.0),
    PreprocessingConfig(split="temporal", test_start=1_000_350, validation_start=1_000_300),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: f"{config.split}-{config.duplicates}")
def test_streaming_equals_in_memory_on_a_written_log(tmp_path, config):
    write_log(tmp_path / "log.csv")
    reading = dict(raw_path=tmp_path / "log.csv", user_col="u", item_col="i", time_col="t", rating_col="r")
    in_memory, streamed = run_both(tmp_path, "csv", config, chunk_bytes=8192, **reading)
    assert_same_output(tmp_path / "in_memory", tmp_path / "streamed")
    assert streamed.metadata == in_memory.metadata
    assert streamed.item_vocabulary == in_memory.item_vocabulary  # string ids: "b0007" made every id a string
    assert streamed.item_vocabulary.id_type == "str" and streamed.user_vocabulary.id_type == "int"
    assert len(list((tmp_path / "streamed" / "train").glob("data-*.arrow"))) > 5  # many user ranges


def test_streaming_parquet_in_and_out(tmp_path):
    frame = write_log(tmp_path / "log.csv")
    frame.to_parquet(tmp_path / "log.parquet", row_group_size=500)
    reading = dict(raw_path=tmp_path / "log.parquet", user_col="u", item_col="i", time_col="t", rating_col="r")
    config = PreprocessingConfig(duplicates="drop")
    in_memory = preprocess("csv", tmp_path / "in_memory", config=config, save_format="parquet", **reading)
    streamed = preprocess(
        "csv", tmp_path / "streamed", config=config, save_format="parquet", memory_budget_mb=0.2, **reading
    )
    assert sorted(path.name for path in (tmp_path / "streamed").glob("*.parquet")) == [
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    assert_same_output(tmp_path / "in_memory", tmp_path / "streamed")
    assert streamed.metadata == in_memory.metadata


@pytest.mark.parametrize(
    "config",
    [PreprocessingConfig(), PreprocessingConfig(split="temporal"), PreprocessingConfig(split="paper", k_core=10)],
    ids=["leave_one_out", "temporal", "paper-10core"],
)
def test_streaming_equals_in_memory_on_ml_100k(tmp_path, config):
    raw_dir = shared_dataset("ml-100k")
    in_memory = preprocess("ml-100k", tmp_path / "in_memory", config=config, raw_dir=raw_dir)
    streamed = preprocess("ml-100k", tmp_path / "streamed", config=config, raw_dir=raw_dir, memory_budget_mb=0.5)
    assert_same_output(tmp_path / "in_memory", tmp_path / "streamed")
    assert streamed.metadata == in_memory.metadata
    assert streamed.metadata["source_verified"] is True  # the official-file check ran on the streamed rows too
    assert streamed.dataset["train"].cache_files  # memory-mapped from the output folder, not in memory


BAD_LINE = "7,12,4.0,notatime"


def bad_log(tmp_path: Path, bad_line: int) -> Path:
    """A ml-latest-small style ratings.csv (header, userId,movieId,rating,timestamp) with a bad 1-based line."""
    rng = np.random.default_rng(1)
    lines = ["userId,movieId,rating,timestamp"]
    lines += [
        f"{rng.integers(1, 40)},{rng.integers(1, 60)},{rng.integers(1, 11) / 2},{1_000 + row}" for row in range(3000)
    ]
    lines[bad_line - 1] = BAD_LINE
    lines.insert(bad_line + 5, "1,2")  # a line that does not split into four fields
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad_line", [2, 2500])
def test_a_bad_line_in_any_chunk_is_named_as_the_in_memory_path_names_it(tmp_path, bad_line):
    path = bad_log(tmp_path, bad_line)
    with pytest.raises(MalformedInputError) as in_memory:
        preprocess("ml-latest-small", tmp_path / "a", raw_path=path)
    with pytest.raises(MalformedInputError) as streamed:
        list(InteractionChunks("ml-latest-small", raw_path=path, chunk_bytes=4096))
    assert str(streamed.value) == str(in_memory.value)
    assert f"line {bad_line}: timestamp 'notatime' is not a number" in str(streamed.value)


def test_skipped_bad_lines_are_counted_as_in_memory(tmp_path):
    path = bad_log(tmp_path, 2500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModifiedSourceWarning)
        in_memory, streamed = run_both(
            tmp_path, "ml-latest-small", PreprocessingConfig(), 4096, raw_path=path, errors="skip"
        )
    assert streamed.metadata["skipped_rows"] == {"unparsable line": 1, "non-numeric timestamp": 1}
    assert streamed.metadata == in_memory.metadata
    assert_same_output(tmp_path / "in_memory", tmp_path / "streamed")


def test_refused_duplicates_name_the_same_first_row(tmp_path):
    frame = pd.DataFrame(
        {"user_id": [5, 1, 1, 9, 9, 1], "item_id": [1, 2, 3, 4, 4, 2], "timestamp": [1, 2, 3, 4, 4, 2]}
    )
    frame.to_csv(tmp_path / "log.csv", index=False)
    config = PreprocessingConfig(duplicates="error")
    with pytest.raises(ValueError, match="exact duplicate") as in_memory:
        preprocess("csv", tmp_path / "a", config=config, raw_path=tmp_path / "log.csv")
    chunks = InteractionChunks("csv", raw_path=tmp_path / "log.csv")
    with pytest.raises(ValueError, match="exact duplicate") as streamed:
        build_sequences_streaming(chunks, tmp_path / "b", config, "csv", memory_budget_mb=1e-5)  # a user per range
    assert str(streamed.value) == str(in_memory.value)
    assert "2 exact duplicate rows" in str(streamed.value) and "user 1, item 2, timestamp 2" in str(streamed.value)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b*"))  # no partial output, no work files


def test_streaming_needs_an_output_folder_and_a_positive_budget(tmp_path):
    with pytest.raises(ValueError, match="output_dir"):
        preprocess("synthetic", memory_budget_mb=64)
    with pytest.raises(ValueError, match="memory_budget_mb must be > 0"):
        StreamingBudget.from_megabytes(0)
    assert StreamingBudget.from_megabytes(220 / 2**20 * 1000).partition_rows == 1000


@pytest.mark.parametrize("layout", ["movielens", "amazon"])
def test_write_ratings_log_has_the_asked_shape(tmp_path, layout):
    path = write_ratings_log(tmp_path / "log.csv", 5000, 200, 300, layout=layout, chunk_rows=700)
    names = ["userId", "movieId", "rating", "timestamp"]
    read = pa_csv.read_csv(
        path, read_options=pa_csv.ReadOptions(column_names=None if layout == "movielens" else names)
    ).to_pandas()
    assert list(read.columns) == names and len(read) == 5000
    per_user = read.groupby("userId").size()
    assert len(per_user) == 200 and per_user.min() >= (20 if layout == "movielens" else 1)
    assert read["movieId"].nunique() == 300  # every item at least once
    stars = set(read["rating"])
    assert stars <= ({x / 2 for x in range(1, 11)} if layout == "movielens" else {1.0, 2.0, 3.0, 4.0, 5.0})
    again = write_ratings_log(tmp_path / "again.csv", 5000, 200, 300, layout=layout, chunk_rows=700)
    assert again.read_bytes() == path.read_bytes()  # seeded


def test_written_log_preprocesses_the_same_both_ways(tmp_path):
    path = write_ratings_log(tmp_path / "ratings.csv", 8_000, 200, 300, chunk_rows=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModifiedSourceWarning)  # not the official ml-20m file
        in_memory, streamed = run_both(tmp_path, "ml-20m", PreprocessingConfig(), 16384, raw_path=path)
    assert_same_output(tmp_path / "in_memory", tmp_path / "streamed")
    assert json.loads((tmp_path / "streamed" / "preprocessing.json").read_text())["num_interactions"] == 8_000
    assert pa.types.is_list(streamed.dataset["train"].data.schema.field("item_ids").type)


def test_training_data_streams_the_train_split_across_processes(tmp_path):
    from hf_hstu.training.arguments import DataArguments
    from hf_hstu.training.data import load_training_data, streaming_train_split

    preprocess("synthetic", tmp_path / "data", memory_budget_mb=2)
    data = load_training_data(DataArguments(dataset=str(tmp_path / "data"), sample_ratio=0.5), 50)
    assert data.collator.sample_ratio == 1.0  # evaluation sees whole histories
    everyone = set(data.splits["train"]["user_id"])

    def users(rank: int, epoch: int) -> list[int]:
        stream = streaming_train_split(data, seed=9, process_index=rank, num_processes=2)
        stream.set_epoch(epoch)
        return [row["user_id"] for row in stream]

    for epoch in (0, 1):
        first, second = users(0, epoch), users(1, epoch)
        assert set(first).isdisjoint(second) and set(first) | set(second) == everyone
        assert abs(len(first) - len(second)) <= 16  # near-equal shards
    assert users(0, 0) == users(0, 0)  # seeded
    assert users(0, 0) != users(0, 1)  # reshuffled each epoch


def test_a_bad_parquet_row_in_a_later_chunk_is_named_as_in_memory(tmp_path):
    frame = pd.DataFrame(
        {"user_id": np.arange(1000) % 50, "item_id": np.arange(1000) % 70, "timestamp": np.arange(1000)}
    )
    frame.loc[700, "timestamp"] = -5
    frame.to_parquet(tmp_path / "log.parquet")
    with pytest.raises(MalformedInputError) as in_memory:
        preprocess("csv", tmp_path / "a", raw_path=tmp_path / "log.parquet")
    with pytest.raises(MalformedInputError) as streamed:
        list(InteractionChunks("csv", raw_path=tmp_path / "log.parquet", chunk_bytes=4096))  # 128 rows a chunk
    assert str(streamed.value) == str(in_memory.value)
    assert "row 700: timestamp '-5' is negative" in str(streamed.value)


@pytest.mark.parametrize("raw_ids", [[], [7], list(range(3, 300_000, 2)), ['a"b', "é", "x"]], ids=len)
def test_vocabulary_file_is_the_json_of_its_record(tmp_path, raw_ids):
    vocabulary = UserVocabulary(np.asarray(raw_ids, dtype=np.int64) if raw_ids and raw_ids[0] == 3 else raw_ids)
    path = vocabulary.save(tmp_path)  # written in slices
    assert path.read_text(encoding="utf-8") == json.dumps(vocabulary.to_dict())
    assert UserVocabulary.load(tmp_path) == vocabulary


def test_output_shards_hold_record_batches_of_a_budgeted_size(tmp_path, monkeypatch):
    """Shards are written in few large record batches (reading one back memory-mapped then maps few pages around
    their headers), not datasets' 1,000 rows per batch."""
    import hf_hstu.data.streaming as streaming

    path = write_ratings_log(tmp_path / "ratings.csv", 30_000, 3_000, 500, layout="amazon")
    chunks = InteractionChunks("amazon-books", raw_path=path)
    config = PreprocessingConfig(paper_filter=None)
    data = build_sequences_streaming(chunks, tmp_path / "large", config, "amazon-books", memory_budget_mb=64)
    shard = tmp_path / "large" / "train" / "data-00000-of-00001.arrow"
    batches = pa.ipc.open_stream(pa.memory_map(str(shard))).read_all().to_batches()
    assert [batch.num_rows for batch in batches] == [len(data.dataset["train"])]
    assert len(data.dataset["train"]) > 2_000  # users with >= 3 events: two batches of 1,000 rows, or more, before

    monkeypatch.setattr(streaming, "_BATCH_BYTES", 2**14)
    chunks = InteractionChunks("amazon-books", raw_path=path)
    small = build_sequences_streaming(chunks, tmp_path / "small", config, "amazon-books", memory_budget_mb=64)
    shard = tmp_path / "small" / "train" / "data-00000-of-00001.arrow"
    batches = pa.ipc.open_stream(pa.memory_map(str(shard))).read_all().to_batches()
    sizes = [batch.nbytes for batch in batches]
    assert len(sizes) > 5 and sum(sizes) / len(sizes) <= 2**14  # rows per batch from the average row
    assert small.dataset["train"].data.table.equals(data.dataset["train"].data.table)
