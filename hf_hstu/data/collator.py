"""Batching of per-user sequence rows into the padded tensors the sequential recommenders take."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._segments import offsets_from_lengths

# row list column -> output tensor name
_SEQUENCE_FIELDS = {"item_ids": "input_ids", "timestamps": "timestamps", "ratings": "ratings"}
# row target column -> output tensor name
_TARGET_FIELDS = {
    "target_item_id": "target_ids",
    "target_timestamp": "target_timestamps",
    "target_rating": "target_ratings",
}


class SequenceCollator:
    """Turns rows of a preprocessed split (``item_ids``, ``timestamps``[, ``ratings``] lists and, for validation and
    test rows, ``target_item_id``, ``target_timestamp``[, ``target_rating``]) into a batch of torch tensors.

    Each row keeps its most recent ``max_seq_len`` events (``training_window`` for a row without a target, a training
    row, whose every event is a label: the model's ``config.training_window`` decides how many it reads); the batch
    is padded (item id 0) to its longest row after truncation, on the right or the left. Output (B = batch size, L =
    that longest length):

    - ``input_ids``, ``timestamps`` (and ``ratings``): (B, L) int64;
    - ``attention_mask``: (B, L) int64, 1 on events and 0 on padding;
    - ``labels``: (B, L) int64, a copy of ``input_ids`` (the model shifts them: position i predicts labels[i + 1]);
    - ``target_ids``, ``target_timestamps`` (and ``target_ratings``): (B,) int64 when the rows have targets;
    - ``seq_offsets``: (B + 1,) int64 cumulative lengths, with ``return_jagged=True`` (for jagged kernels).

    ``sample_ratio < 1`` samples long histories for training, as the HSTU reference code's ``sample_ratio``: each
    event of a row is kept with this probability, in order (a row left with none keeps its last event), before the
    truncation to ``max_seq_len``. The draw depends only on (``seed``, epoch, the row's ``user_id``): the same on
    every process, DataLoader worker and batch composition, and new at each :meth:`set_epoch`.

    Its only state is its arguments and the epoch, so it is deterministic and can be pickled into DataLoader workers
    (set the epoch before iterating the loader: workers receive a copy when an epoch's iteration starts).
    """

    def __init__(
        self,
        max_seq_len: int,
        padding_side: str = "right",
        return_jagged: bool = False,
        training_window: int | None = None,
        sample_ratio: float = 1.0,
        seed: int = 0,
    ):
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        if training_window is not None and training_window < max_seq_len:
            raise ValueError(f"training_window must be >= max_seq_len ({max_seq_len}), got {training_window}")
        if padding_side not in ("right", "left"):
            raise ValueError(f'padding_side must be "right" or "left", got {padding_side!r}')
        if not 0 < sample_ratio <= 1:
            raise ValueError(f"sample_ratio must be in (0, 1], got {sample_ratio}")
        self.max_seq_len = max_seq_len
        self.padding_side = padding_side
        self.return_jagged = return_jagged
        self.training_window = training_window or max_seq_len
        self.sample_ratio = sample_ratio
        self.seed = seed
        self.epoch = 0

    def __repr__(self) -> str:
        sampling = f", sample_ratio={self.sample_ratio}, seed={self.seed}" if self.sample_ratio < 1 else ""
        return (
            f"{type(self).__name__}(max_seq_len={self.max_seq_len}, padding_side={self.padding_side!r}, "
            f"return_jagged={self.return_jagged}, training_window={self.training_window}{sampling})"
        )

    def set_epoch(self, epoch: int) -> None:
        """Draw the ``sample_ratio`` samples of this epoch."""
        self.epoch = epoch

    def _kept(self, row: Mapping[str, Any]) -> np.ndarray | slice:
        """Positions of the row's events that this epoch's sample keeps (all of them without sampling)."""
        if self.sample_ratio >= 1:
            return slice(None)
        if row.get("user_id") is None:
            raise KeyError("sample_ratio < 1 needs each row's 'user_id' (the sample is drawn per user and epoch)")
        length = len(row["item_ids"])
        draws = np.random.default_rng((self.seed, self.epoch, int(row["user_id"]))).random(length)
        kept = np.flatnonzero(draws < self.sample_ratio)
        return kept if len(kept) or length == 0 else np.array([length - 1])

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(rows) == 0:
            raise ValueError("cannot collate an empty batch")
        fields = [name for name in _SEQUENCE_FIELDS if name in rows[0]]
        if "item_ids" not in fields or "timestamps" not in fields:
            raise KeyError(f"rows need 'item_ids' and 'timestamps' lists, got keys {sorted(rows[0])}")
        for name in fields[1:]:
            for index, row in enumerate(rows):
                if len(row[name]) != len(row["item_ids"]):
                    raise ValueError(
                        f"row {index}: {name} has {len(row[name])} values but item_ids has {len(row['item_ids'])}"
                    )
        kept = [self._kept(row) for row in rows]
        windows = [self.max_seq_len if row.get("target_item_id") is not None else self.training_window for row in rows]
        lists = {
            name: [
                np.asarray(row[name], dtype=np.int64)[keep][-window:]
                for row, keep, window in zip(rows, kept, windows, strict=True)
            ]
            for name in fields
        }
        lengths = np.array([len(sequence) for sequence in lists["item_ids"]], dtype=np.int64)
        batch_size, width = len(rows), int(lengths.max())
        offsets = offsets_from_lengths(lengths)
        row_index = np.repeat(np.arange(batch_size), lengths)
        column_index = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        if self.padding_side == "left":
            column_index += np.repeat(width - lengths, lengths)
        batch = {}
        for name in fields:
            padded = np.zeros((batch_size, width), dtype=np.int64)
            padded[row_index, column_index] = np.concatenate(lists[name])
            batch[_SEQUENCE_FIELDS[name]] = torch.from_numpy(padded)
        mask = np.zeros((batch_size, width), dtype=np.int64)
        mask[row_index, column_index] = 1
        batch["attention_mask"] = torch.from_numpy(mask)
        batch["labels"] = batch["input_ids"].clone()
        for name, output in _TARGET_FIELDS.items():
            present = [name in row and row[name] is not None for row in rows]
            if any(present):
                if not all(present):
                    raise ValueError(f"some rows of the batch have {name!r} and others do not")
                batch[output] = torch.tensor([int(row[name]) for row in rows], dtype=torch.int64)
        if self.return_jagged:
            batch["seq_offsets"] = torch.from_numpy(offsets)
        return batch
