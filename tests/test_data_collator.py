"""SequenceCollator: padding, truncation, targets, jagged offsets, DataLoader workers."""

from __future__ import annotations

import pickle

import datasets
import pytest
import torch
from torch.utils.data import DataLoader

from hf_hstu.data import SequenceCollator, build_sequences, make_synthetic_interactions

ROWS = [
    {"user_id": 1, "item_ids": [4, 5, 6, 7], "timestamps": [10, 20, 30, 40], "ratings": [1, 2, 3, 4]},
    {"user_id": 2, "item_ids": [8], "timestamps": [15], "ratings": [5]},
    {"user_id": 3, "item_ids": [9, 3], "timestamps": [11, 12], "ratings": [2, 2]},
]
TARGETS = [
    {"target_item_id": 1, "target_timestamp": 50, "target_rating": 3},
    {"target_item_id": 2, "target_timestamp": 16, "target_rating": 4},
    {"target_item_id": 3, "target_timestamp": 13, "target_rating": 5},
]


def tensor(rows):
    return torch.tensor(rows, dtype=torch.int64)


def test_right_padding_keeps_the_most_recent_events():
    batch = SequenceCollator(max_seq_len=3)(ROWS)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "ratings", "timestamps"]
    assert torch.equal(batch["input_ids"], tensor([[5, 6, 7], [8, 0, 0], [9, 3, 0]]))
    assert torch.equal(batch["timestamps"], tensor([[20, 30, 40], [15, 0, 0], [11, 12, 0]]))
    assert torch.equal(batch["ratings"], tensor([[2, 3, 4], [5, 0, 0], [2, 2, 0]]))
    assert torch.equal(batch["attention_mask"], tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert all(value.dtype == torch.int64 for value in batch.values())


def test_left_padding_and_width_is_the_longest_row_after_truncation():
    batch = SequenceCollator(max_seq_len=200, padding_side="left")(ROWS[1:])
    assert torch.equal(batch["input_ids"], tensor([[0, 8], [9, 3]]))
    assert torch.equal(batch["timestamps"], tensor([[0, 15], [11, 12]]))
    assert torch.equal(batch["attention_mask"], tensor([[0, 1], [1, 1]]))


def test_targets_and_jagged_offsets():
    rows = [{**row, **target} for row, target in zip(ROWS, TARGETS, strict=True)]
    batch = SequenceCollator(max_seq_len=2, return_jagged=True)(rows)
    assert torch.equal(batch["input_ids"], tensor([[6, 7], [8, 0], [9, 3]]))
    assert torch.equal(batch["target_ids"], tensor([1, 2, 3]))
    assert torch.equal(batch["target_timestamps"], tensor([50, 16, 13]))
    assert torch.equal(batch["target_ratings"], tensor([3, 4, 5]))
    assert torch.equal(batch["seq_offsets"], tensor([0, 2, 3, 5]))


def test_rows_without_ratings_or_with_null_targets():
    rows = [{"item_ids": [1, 2], "timestamps": [5, 6], "target_item_id": None}]
    batch = SequenceCollator(max_seq_len=4)(rows)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "timestamps"]


def test_bad_batches_are_refused():
    collator = SequenceCollator(max_seq_len=4)
    with pytest.raises(ValueError, match="row 1: timestamps has 2 values but item_ids has 1"):
        collator([ROWS[0], {**ROWS[1], "timestamps": [1, 2]}])
    with pytest.raises(ValueError, match="some rows of the batch have 'target_item_id'"):
        collator([{**ROWS[0], **TARGETS[0]}, ROWS[1]])
    with pytest.raises(KeyError, match="need 'item_ids' and 'timestamps'"):
        collator([{"item_ids": [1]}])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="padding_side"):
        SequenceCollator(4, padding_side="middle")


def test_dataloader_workers_give_the_same_batches():
    events = make_synthetic_interactions(num_users=40, num_items=50, num_clusters=5, max_length=40)
    test_split = build_sequences(events).dataset["test"]
    assert isinstance(test_split, datasets.Dataset)
    collator = pickle.loads(pickle.dumps(SequenceCollator(max_seq_len=16, padding_side="left")))
    serial = list(DataLoader(test_split, batch_size=8, collate_fn=collator))
    parallel = list(DataLoader(test_split, batch_size=8, collate_fn=collator, num_workers=2))
    assert len(serial) == len(parallel) == 5
    for first, second in zip(serial, parallel, strict=True):
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first)
    last = test_split[0]
    assert serial[0]["input_ids"][0, -1].item() == last["item_ids"][-1]
    assert serial[0]["target_ids"][0].item() == last["target_item_id"]


def test_training_rows_keep_the_training_window_and_evaluation_rows_max_seq_len():
    collator = SequenceCollator(max_seq_len=2, training_window=3)
    training = collator(ROWS)  # no targets: every event is a label
    assert torch.equal(training["input_ids"], tensor([[5, 6, 7], [8, 0, 0], [9, 3, 0]]))
    evaluation = collator([{**row, **target} for row, target in zip(ROWS, TARGETS, strict=True)])
    assert torch.equal(evaluation["input_ids"], tensor([[6, 7], [8, 0], [9, 3]]))
    assert SequenceCollator(max_seq_len=2)(ROWS)["input_ids"].shape == (3, 2)  # the window defaults to max_seq_len
    with pytest.raises(ValueError, match="training_window must be >= max_seq_len"):
        SequenceCollator(max_seq_len=3, training_window=2)


# sample_ratio: the HSTU reference code's sampling of long histories.

LONG = {
    "user_id": 7,
    "item_ids": list(range(1, 101)),
    "timestamps": list(range(1000, 1100)),
    "ratings": [i % 5 + 1 for i in range(100)],
}


def test_sample_ratio_keeps_an_in_order_subsequence_with_aligned_fields():
    batch = SequenceCollator(max_seq_len=200, sample_ratio=0.3, seed=1)([LONG])
    items, timestamps, ratings = (
        batch[name][0][batch["attention_mask"][0].bool()] for name in ("input_ids", "timestamps", "ratings")
    )
    assert 15 <= len(items) <= 45  # ~30 of 100
    assert torch.all(items[1:] > items[:-1])  # in order, no repeats
    assert torch.equal(timestamps, items + 999) and torch.equal(ratings, (items - 1) % 5 + 1)  # same events


def test_sample_ratio_is_per_user_and_epoch_whatever_the_batch():
    collator = SequenceCollator(max_seq_len=200, sample_ratio=0.5, seed=3)
    other = {**LONG, "user_id": 8}
    alone = collator([LONG])["input_ids"][0]
    in_batch = collator([other, LONG])
    assert torch.equal(in_batch["input_ids"][1][: len(alone)], alone)
    assert not torch.equal(in_batch["input_ids"][0][: len(alone)], alone)  # another user, another sample
    assert torch.equal(pickle.loads(pickle.dumps(collator))([LONG])["input_ids"][0], alone)
    collator.set_epoch(1)
    assert not torch.equal(collator([LONG])["input_ids"][0][: len(alone)], alone)  # a new sample each epoch
    collator.set_epoch(0)
    assert torch.equal(collator([LONG])["input_ids"][0], alone)
    assert not torch.equal(SequenceCollator(200, sample_ratio=0.5, seed=4)([LONG])["input_ids"][0][: len(alone)], alone)


def test_sample_ratio_samples_before_truncating_and_keeps_at_least_one_event():
    sampled = SequenceCollator(max_seq_len=200, sample_ratio=0.5, seed=0)([LONG])["input_ids"][0]
    sampled = sampled[sampled > 0]
    truncated = SequenceCollator(max_seq_len=5, sample_ratio=0.5, seed=0)([LONG])["input_ids"][0]
    assert torch.equal(truncated, sampled[-5:])
    rare = SequenceCollator(max_seq_len=200, sample_ratio=1e-9)([LONG, {**ROWS[0], "user_id": 2}])
    assert torch.equal(rare["input_ids"], tensor([[100], [7]]))  # nothing drawn: the last event stays
    whole = SequenceCollator(max_seq_len=200, sample_ratio=1.0)([LONG])
    assert torch.equal(whole["input_ids"][0], torch.arange(1, 101))


def test_sample_ratio_checks():
    with pytest.raises(ValueError, match="sample_ratio must be in"):
        SequenceCollator(max_seq_len=4, sample_ratio=0.0)
    with pytest.raises(ValueError, match="sample_ratio must be in"):
        SequenceCollator(max_seq_len=4, sample_ratio=1.5)
    with pytest.raises(KeyError, match="user_id"):
        SequenceCollator(max_seq_len=4, sample_ratio=0.5)([{"item_ids": [1, 2], "timestamps": [1, 2]}])
    assert "sample_ratio=0.5, seed=2" in repr(SequenceCollator(max_seq_len=4, sample_ratio=0.5, seed=2))
