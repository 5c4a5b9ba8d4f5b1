"""Vectorised index arithmetic on segments (runs of consecutive rows, e.g. one user's events)."""

from __future__ import annotations

import numpy as np


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop (int64)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    segment_starts = np.cumsum(lengths) - lengths  # where each segment begins in the output
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - segment_starts, lengths)


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """(n + 1,) int64 cumulative offsets ``[0, l0, l0 + l1, ...]``."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets
