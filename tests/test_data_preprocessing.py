"""Preprocessing: stable sort, filters, vocabularies, split protocols, saving, the Hub, the synthetic dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from data_testing import shared_dataset

from hf_hstu.data import (
    ItemVocabulary,
    PreprocessingConfig,
    UserVocabulary,
    build_sequences,
    load_raw_interactions,
    load_sequences,
    make_synthetic_interactions,
    preprocess,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def frame(rows: list[tuple], columns=("user_id", "item_id", "timestamp")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def full_sequences(data, split: str = "test") -> dict[int, list[int]]:
    """user index -> history + target item indices of a split with targets."""
    return {row["user_id"]: row["item_ids"] + [row["target_item_id"]] for row in data.dataset[split]}


# Stable sort.

TIES = [(1, 10, 5), (2, 20, 1), (1, 11, 5), (1, 12, 3), (1, 13, 5), (1, 14, 9), (2, 21, 1)]


def test_ties_keep_the_row_order_of_the_source():
    data = build_sequences(frame(TIES), PreprocessingConfig(split="paper"))
    assert data.item_vocabulary.raw_ids == [10, 11, 12, 13, 14, 20, 21]
    # user 1: 12 (t=3), then the three t=5 events in row order 10, 11, 13, then 14 (t=9)
    assert full_sequences(data) == {1: [3, 1, 2, 4, 5], 2: [6, 7]}
    shuffled = frame([TIES[i] for i in (4, 2, 6, 0, 5, 3, 1)])
    # the same events in another row order: ties now follow that order (13, 11, 10 and 21, 20)
    assert full_sequences(build_sequences(shuffled, PreprocessingConfig(split="paper"))) == {
        1: [3, 4, 2, 1, 5],
        2: [7, 6],
    }


def test_order_matches_a_stable_reference_sort_and_is_deterministic():
    rng = np.random.default_rng(0)
    events = frame(
        list(zip(rng.integers(0, 50, 3000), rng.integers(0, 200, 3000), rng.integers(0, 20, 3000), strict=True))
    )
    first = build_sequences(events, PreprocessingConfig(split="paper"))
    reference = events.sort_values(["user_id", "timestamp"], kind="stable")
    expected = {
        int(first.user_vocabulary.encode([user])[0]): first.item_vocabulary.encode(group["item_id"].tolist()).tolist()
        for user, group in reference.groupby("user_id", sort=True)
        if len(group) >= 2
    }
    assert full_sequences(first) == expected
    second = build_sequences(events.copy(), PreprocessingConfig(split="paper"))
    for split in first.dataset:
        assert first.dataset[split].to_dict() == second.dataset[split].to_dict()


# Split protocols, hand-computed.

EVENTS = [("a", 5, 1, 1), ("a", 6, 2, 2), ("a", 7, 3, 3), ("a", 8, 4, 4), ("a", 9, 5, 5)]
EVENTS += [("b", 7, 3, 5), ("b", 5, 1, 4), ("b", 6, 2, 3), ("c", 5, 9, 1), ("c", 6, 8, 2)]
RATED = ("user_id", "item_id", "timestamp", "rating")


def test_leave_one_out():
    data = build_sequences(frame(EVENTS, RATED))  # items 5..9 -> 1..5; "c" (2 events) is too short
    assert data.user_vocabulary.raw_ids == ["a", "b"]
    assert data.metadata["dropped"]["short_sequences"] == 2
    train, validation, test = (data.dataset[split].to_list() for split in ("train", "validation", "test"))
    assert train == [
        {"user_id": 1, "item_ids": [1, 2, 3], "timestamps": [1, 2, 3], "ratings": [1, 2, 3]},
        {"user_id": 2, "item_ids": [1], "timestamps": [1], "ratings": [4]},
    ]
    assert validation == [
        {**train[0], "target_item_id": 4, "target_timestamp": 4, "target_rating": 4},
        {**train[1], "target_item_id": 2, "target_timestamp": 2, "target_rating": 3},
    ]
    assert test == [
        {
            "user_id": 1,
            "item_ids": [1, 2, 3, 4],
            "timestamps": [1, 2, 3, 4],
            "ratings": [1, 2, 3, 4],
            "target_item_id": 5,
            "target_timestamp": 5,
            "target_rating": 5,
        },
        {
            "user_id": 2,
            "item_ids": [1, 2],
            "timestamps": [1, 2],
            "ratings": [4, 3],
            "target_item_id": 3,
            "target_timestamp": 3,
            "target_rating": 5,
        },
    ]


def test_paper_protocol():
    data = build_sequences(frame(EVENTS, RATED), PreprocessingConfig(split="paper"))
    assert list(data.dataset) == ["train", "test"]
    assert data.user_vocabulary.raw_ids == ["a", "b", "c"]
    assert data.dataset["train"]["item_ids"] == [[1, 2, 3, 4], [1, 2], [2]]
    assert data.dataset["test"]["item_ids"] == [[1, 2, 3, 4], [1, 2], [2]]
    assert data.dataset["test"]["target_item_id"] == [5, 3, 1]
    assert data.dataset["test"]["target_timestamp"] == [5, 3, 9]


def test_temporal_split_with_explicit_cutoffs():
    events = [(1, item, t) for item, t in zip(range(1, 7), [1, 5, 12, 15, 22, 25], strict=True)]
    events += [(2, 7, 11), (2, 8, 21), (3, 9, 2), (3, 10, 3), (4, 1, 21), (4, 2, 23)]
    data = build_sequences(frame(events), PreprocessingConfig(split="temporal", validation_start=10, test_start=20))
    assert data.metadata["cutoffs"] == {"validation_start": 10, "test_start": 20}
    assert data.dataset["train"].to_list() == [
        {"user_id": 1, "item_ids": [1, 2], "timestamps": [1, 5]},
        {"user_id": 3, "item_ids": [9, 10], "timestamps": [2, 3]},
    ]
    assert data.dataset["validation"].to_list() == [
        {"user_id": 1, "item_ids": [1, 2], "timestamps": [1, 5], "target_item_id": 3, "target_timestamp": 12}
    ]
    assert data.dataset["test"].to_list() == [
        {
            "user_id": 1,
            "item_ids": [1, 2, 3, 4],
            "timestamps": [1, 5, 12, 15],
            "target_item_id": 5,
            "target_timestamp": 22,
        },
        {"user_id": 2, "item_ids": [7], "timestamps": [11], "target_item_id": 8, "target_timestamp": 21},
    ]


def test_temporal_default_cutoffs_are_event_quantiles():
    events = frame([(t % 7, t % 13, t) for t in range(1, 101)])
    data = build_sequences(events, PreprocessingConfig(split="temporal"))
    # 10 events (91..100) at or after the test cut-off, 10 more (81..90) in the validation window
    assert data.metadata["cutoffs"] == {"validation_start": 81, "test_start": 91}
    for row in data.dataset["test"]:
        assert row["target_timestamp"] >= 91 and max(row["timestamps"]) < 91
    no_validation = build_sequences(events, PreprocessingConfig(split="temporal", validation_fraction=0))
    assert list(no_validation.dataset) == ["train", "test"]


# Filters.

FILTER_EVENTS = [("u1", "i1", 1), ("u1", "i2", 2), ("u1", "i3", 3), ("u2", "i1", 1), ("u2", "i2", 2), ("u3", "i3", 1)]


def test_k_core_iterates_but_the_paper_filter_is_a_single_pass():
    paper = build_sequences(frame(FILTER_EVENTS), PreprocessingConfig(split="paper", paper_filter=2))
    # u3 (1 row) goes; i3 had 2 raw rows, so (u1, i3) stays although i3 is then left with 1 row
    assert (paper.metadata["num_interactions"], paper.item_vocabulary.raw_ids) == (5, ["i1", "i2", "i3"])
    core = build_sequences(frame(FILTER_EVENTS), PreprocessingConfig(split="paper", k_core=2))
    # dropping u3 leaves i3 with 1 row, so the next round drops (u1, i3)
    assert (core.metadata["num_interactions"], core.item_vocabulary.raw_ids) == (4, ["i1", "i2"])
    assert core.metadata["dropped"]["k_core"] == 2


def test_min_rating_and_repeated_pairs():
    rows = [(1, 1, 1, 5), (1, 2, 2, 2), (1, 1, 3, 4), (1, 3, 4, 4), (1, 4, 5, 5)]
    first = build_sequences(frame(rows, RATED), PreprocessingConfig(split="paper", min_rating=4, duplicates="first"))
    assert first.dataset["test"][0]["timestamps"] == [1, 4]
    assert first.metadata["dropped"] == {
        "malformed": 0,
        "below_min_rating": 1,
        "duplicates": 1,
        "short_sequences": 0,
    }
    last = build_sequences(frame(rows, RATED), PreprocessingConfig(split="paper", min_rating=4, duplicates="last"))
    assert last.dataset["test"][0]["timestamps"] == [3, 4]
    kept_all = build_sequences(frame(rows, RATED), PreprocessingConfig(split="paper"))
    assert kept_all.dataset["test"][0]["item_ids"] == [1, 2, 1, 3]


def test_half_star_ratings_are_stored_as_integer_half_stars():
    rows = [(1, 1, 1, 0.5), (1, 2, 2, 4.5), (1, 3, 3, 5.0)]
    data = build_sequences(frame(rows, RATED), PreprocessingConfig(split="paper"))
    assert data.metadata["rating_step"] == 0.5
    assert data.dataset["test"][0]["ratings"] == [1, 9] and data.dataset["test"][0]["target_rating"] == 10
    with pytest.raises(ValueError, match="multiples of 0.5"):
        build_sequences(frame([(1, 1, 1, 0.3), (1, 2, 2, 1.0)], RATED), PreprocessingConfig(split="paper"))


def test_empty_results_are_clear_errors():
    with pytest.raises(ValueError, match=r"no interactions left after filtering 6 rows \(filters: .*k_core=5"):
        build_sequences(frame(FILTER_EVENTS), PreprocessingConfig(k_core=5))
    with pytest.raises(ValueError, match="needs ratings"):
        build_sequences(frame(FILTER_EVENTS), PreprocessingConfig(min_rating=3))
    with pytest.raises(ValueError, match="split 'test' is empty"):
        build_sequences(frame(FILTER_EVENTS), PreprocessingConfig(split="temporal", test_start=100))
    with pytest.raises(ValueError, match="split must be one of"):
        PreprocessingConfig(split="random")


# Real data: split invariants.


def test_split_invariants_on_ml_100k():
    raw = load_raw_interactions("ml-100k", raw_dir=shared_dataset("ml-100k"))
    data = build_sequences(raw.copy())
    ordered = raw.sort_values(["user_id", "timestamp"], kind="stable")
    items = data.item_vocabulary.encode(ordered["item_id"].tolist())
    users = data.user_vocabulary.encode(ordered["user_id"].tolist())
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sequences = dict(zip(users[starts].tolist(), np.split(items, starts[1:]), strict=True))
    train, validation, test = (data.dataset[split] for split in ("train", "validation", "test"))
    for train_row, validation_row, test_row in zip(train, validation, test, strict=True):
        sequence = sequences[test_row["user_id"]].tolist()
        assert train_row["item_ids"] == validation_row["item_ids"] == sequence[:-2]
        assert validation_row["target_item_id"] == sequence[-2]
        assert test_row["item_ids"] == sequence[:-1] and test_row["target_item_id"] == sequence[-1]
        # no target leaks into its own history: every history timestamp is at or before the target's
        assert max(test_row["timestamps"]) <= test_row["target_timestamp"]
        assert len(test_row["item_ids"]) == len(test_row["timestamps"]) == len(test_row["ratings"])


# Vocabularies.


def test_vocabulary_round_trips(tmp_path):
    vocabulary = ItemVocabulary(np.array([3, 10, 42]))
    assert vocabulary.encode([42, 3]).tolist() == [3, 1] and vocabulary.encode(10).tolist() == [2]
    assert vocabulary.decode([1, 3]) == [3, 42] and vocabulary.num_items == len(vocabulary) == 3
    with pytest.raises(KeyError, match=r"item ids not in the ItemVocabulary \(int ids\): \[7\]"):
        vocabulary.encode([3, 7])
    with pytest.raises(ValueError, match=r"out of range 1\.\.3 \(0 is padding\): \[0, 4\]"):
        vocabulary.decode([0, 1, 4])
    path = vocabulary.save(tmp_path)
    assert path == tmp_path / "item_vocabulary.json"
    assert ItemVocabulary.load(tmp_path) == ItemVocabulary.load(path) == vocabulary
    users = UserVocabulary(["b", "a1"])
    users.save(tmp_path)
    assert UserVocabulary.load(tmp_path).decode([2]) == ["a1"]
    with pytest.raises(ValueError, match="is not a ItemVocabulary file"):
        ItemVocabulary.load(tmp_path / "user_vocabulary.json")
    with pytest.raises(ValueError, match="duplicate raw ids"):
        ItemVocabulary([1, 2, 1])


# Saving, loading, the entry point and the Hub.


def small_data():
    return build_sequences(make_synthetic_interactions(num_users=30, num_items=40, num_clusters=4, max_length=30))


@pytest.mark.parametrize("save_format", ["arrow", "parquet"])
def test_save_and_load_round_trip(tmp_path, save_format):
    data = small_data()
    output = data.save(tmp_path / "out", format=save_format)
    loaded = load_sequences(output)
    for split in ("train", "validation", "test"):
        assert loaded[split].to_list() == data.dataset[split].to_list()
    assert ItemVocabulary.load(output) == data.item_vocabulary
    assert UserVocabulary.load(output) == data.user_vocabulary
    assert json.loads((output / "preprocessing.json").read_text()) == data.metadata


def test_save_is_atomic(tmp_path, monkeypatch):
    data = small_data()
    output = tmp_path / "out"

    def fail(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(ItemVocabulary, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        data.save(output)
    assert list(tmp_path.iterdir()) == []  # neither the output nor the staging directory
    monkeypatch.undo()
    data.save(output)
    with pytest.raises(FileExistsError, match="overwrite"):
        data.save(output)
    (tmp_path / "precious").mkdir()
    with pytest.raises(FileExistsError, match="not a preprocessed dataset"):
        data.save(tmp_path / "precious", overwrite=True)
    changed = build_sequences(make_synthetic_interactions(num_users=20, num_items=40, num_clusters=4, max_length=30))
    changed.save(output, overwrite=True)
    assert load_sequences(output)["test"].num_rows == 20
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "precious"]
    with pytest.raises(FileNotFoundError):
        load_sequences(tmp_path / "precious")


def test_preprocess_script(tmp_path):
    events = frame([(u, (u * 7 + k) % 11, 100 * k + u) for u in range(1, 6) for k in range(4)], ("u", "i", "t"))
    events.to_csv(tmp_path / "events.csv", index=False)
    command = [sys.executable, str(REPO_ROOT / "scripts" / "preprocess.py"), "--dataset", "csv"]
    command += ["--raw-path", str(tmp_path / "events.csv"), "--user-col", "u", "--item-col", "i", "--time-col", "t"]
    command += ["--split", "paper", "--format", "parquet", "--output", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = load_sequences(tmp_path / "out")
    assert list(loaded) == ["train", "test"] and loaded["test"].num_rows == 5
    assert loaded["test"][0]["item_ids"] == ItemVocabulary.load(tmp_path / "out").encode([7, 8, 9]).tolist()
    metadata = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert (metadata["dataset"], metadata["split"], metadata["num_interactions"]) == ("csv", "paper", 20)


@pytest.mark.filterwarnings("ignore::hf_hstu.data.ModifiedSourceWarning")  # a small stand-in for u.data
def test_preprocess_synthetic_and_skip_report(tmp_path):
    data = preprocess("synthetic", tmp_path / "synthetic")
    assert data.metadata["num_users"] == 1000 and data.metadata["num_items"] == 600
    assert load_sequences(tmp_path / "synthetic")["train"].num_rows == 1000
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t3\t3\t5\n1\t4\t3\t6\n1\tx\t3\t7\n")
    data = preprocess("ml-100k", raw_dir=tmp_path, errors="skip")
    assert data.metadata["skipped_rows"] == {"non-integer item_id": 1} and data.metadata["num_interactions"] == 3


def test_push_to_hub_and_load_back(fake_hub):
    data = small_data()
    data.push_to_hub("org/sequences")
    files = fake_hub.files("dataset", "org/sequences")
    assert {"item_vocabulary.json", "user_vocabulary.json", "preprocessing.json"} <= set(files)
    assert json.loads(files["item_vocabulary.json"])["raw_ids"] == data.item_vocabulary.raw_ids
    loaded = datasets.load_dataset("org/sequences")
    targets = ["target_item_id", "target_timestamp", "target_rating"]
    assert loaded["validation"].to_list() == data.dataset["validation"].to_list()
    assert loaded["test"].to_list() == data.dataset["test"].to_list()
    # one schema for all splits on the Hub: the train split carries null targets, which load_sequences drops
    assert all(value is None for column in targets for value in loaded["train"][column])
    assert loaded["train"].remove_columns(targets).to_list() == data.dataset["train"].to_list()
    reloaded = load_sequences("org/sequences")
    for split in ("train", "validation", "test"):
        assert reloaded[split].to_list() == data.dataset[split].to_list()
    with pytest.raises(FileNotFoundError, match="locally or as a Hub dataset"):
        load_sequences("org/absent")


# The synthetic dataset.


def test_synthetic_interactions_are_seeded_and_well_formed():
    events = make_synthetic_interactions(num_users=200, num_items=100, num_clusters=5)
    pd.testing.assert_frame_equal(events, make_synthetic_interactions(num_users=200, num_items=100, num_clusters=5))
    assert not events.equals(make_synthetic_interactions(num_users=200, num_items=100, num_clusters=5, seed=1))
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "rating"]
    lengths = events.groupby("user_id").size()
    assert lengths.index.tolist() == list(range(1, 201)) and lengths.between(20, 150).all()
    assert events["item_id"].between(1, 100).all() and events["rating"].between(1, 5).all()
    assert (events.groupby("user_id")["timestamp"].diff().dropna() > 0).all()


def test_synthetic_next_item_is_predictable_from_recent_items_but_not_from_popularity():
    events = make_synthetic_interactions()
    previous = events.groupby("user_id")["item_id"].shift()
    gap = events.groupby("user_id")["timestamp"].diff()
    within_session = events[gap < 3600].assign(previous=previous[gap < 3600])
    # the most frequent successor of each item explains most within-session transitions...
    pairs = within_session.groupby(["previous", "item_id"]).size()
    top_successor_share = pairs.groupby(level=0).max().sum() / len(within_session)
    assert top_successor_share > 0.6
    # ...while the most popular item is under 3% of all events, and sessions are separated by days
    assert events["item_id"].value_counts(normalize=True).iloc[0] < 0.03
    assert ((gap > 86_400).sum() / gap.notna().sum()) == pytest.approx(1 / 8, abs=0.02)
