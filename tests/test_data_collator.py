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
