"""Incremental inference: the cache (`cache`) of a sequential recommender and the block of tokens one cached
forward pass computes.

What stays valid when events are appended (HSTU, for each layer l and token position i of the kept window):

- layer l's output at i depends on the outputs of layer l - 1 at positions j <= i, on the absolute positions i, j
  (position embeddings and position bias count from the start of the window), on the key times t_j and on the query
  time of i: the time of the event after i, and for the last token the request time (`target_timestamps`, or its
  own time without one). The attention normaliser n = max_tokens + max_output_len is a constant, not the length of
  the history, so nothing else depends on how many events follow.
- Hence, while the window does not slide, every token but the last keeps its keys and values in every layer; the
  last token's query time changes from the request time to the time of the next event, so its outputs, and its
  keys and values from layer 1 on, must be recomputed. The cache recomputes the whole last event (for the
  "combined_item_rating" preprocessor its item token too, whose query time is its own event's: valid but cheap to
  recompute with it), then the new events, attending to the cached keys and values of the earlier tokens.
- SASRec has no query time: all its keys and values stay valid; it recomputes the last event too, which changes
  nothing but keeps one code path.
- When the history passes `max_seq_len` the window slides: every position shifts, so no cached tensor stays valid
  and the row is recomputed from the raw events of its new window (the most recent `max_seq_len` events), by the
  ordinary full forward pass: the result equals a full recompute of those events. Its keys and values are not kept:
  once a window is full every appended event slides it again, so they would never be read. A later call without new
  events (a new request time only) recomputes such a window through the cache and keeps its keys and values again.
  A user past `max_seq_len` therefore pays a full recompute per new event; the cache still saves re-sending the
  history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin

from .hstu_attention import HSTUAttentionContext, RelativeBiasSpec


@dataclass(frozen=True)
class CachedBlock:
    """The tokens one cached forward pass computes, located in the window's token layout (width `width`).

    Rows are right-padded: `positions` (B, P) is the window position of each computed token (clamped into the
    window at padding), `mask` (B, P) marks real ones, `masked_out` (B, 1, P, width) the keys each token does not
    attend to (later positions) and `relative_positions` (B, 1, P, width) the index ``capacity - 1 + j - i`` of each
    (query i, key j) pair into the position bias table, the same for every layer. (`rows`, `cols`) index the real
    tokens, whose keys and values the layers write into the cache at rows `cache_row_index` and window positions
    `write_positions`. Windows never exceed `capacity` tokens (the model's `max_tokens`). `batch_rows` (B,) are the
    cache rows of the block's rows when the block holds some of the cache's `cache_rows` (None: all, in order).
    """

    positions: torch.Tensor
    mask: torch.Tensor
    width: int
    capacity: int
    masked_out: torch.Tensor
    relative_positions: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    cache_row_index: torch.Tensor
    write_positions: torch.Tensor
    cache_rows: int
    batch_rows: torch.Tensor | None = None

    @classmethod
    def from_starts(
        cls,
        start_tokens: torch.Tensor,
        num_tokens: torch.Tensor,
        block_width: int,
        width: int,
        capacity: int,
        cache_rows: int,
        batch_rows: torch.Tensor | None = None,
    ) -> CachedBlock:
        """The block of tokens `start_tokens[b] .. num_tokens[b] - 1` of each row of a window of at most `capacity`
        tokens; `block_width` and `width` are the largest of `num_tokens - start_tokens` and of `num_tokens` (known to
        the caller: no host sync here)."""
        device = num_tokens.device
        offsets = torch.arange(block_width, device=device)
        mask = offsets < (num_tokens - start_tokens).unsqueeze(1)
        positions = (start_tokens.unsqueeze(1) + offsets).clamp(max=width - 1)
        relative_positions = torch.arange(capacity - 1, capacity - 1 + width, device=device) - positions.unsqueeze(2)
        relative_positions = relative_positions.unsqueeze(1)  # (B, 1, P, width)
        masked_out = relative_positions > capacity - 1  # keys after the query
        rows, cols = torch.nonzero(mask, as_tuple=True)
        cache_row_index = rows if batch_rows is None else batch_rows[rows]
        return cls(
            positions,
            mask,
            width,
            capacity,
            masked_out,
            relative_positions,
            rows,
            cols,
            cache_row_index,
            positions[rows, cols],
            cache_rows,
            batch_rows,
        )


@dataclass(frozen=True)
class CachedHSTUAttentionContext(HSTUAttentionContext):
    """The eager context of a cached block: queries are the block's tokens (B, P), keys the whole window (B, T).

    The relative position of key j to query i is taken from their window positions, not from their columns.
    """

    block: CachedBlock | None = None

    @classmethod
    def prepare_block(
        cls,
        block: CachedBlock,
        key_timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
        spec: RelativeBiasSpec,
    ) -> CachedHSTUAttentionContext:
        """Context of `block`: (B, T) int64 times of the window's tokens, (B, P) query times of the block's."""
        return cls(
            backend="eager",
            attention_mask=block.mask,
            key_timestamps=key_timestamps,
            query_timestamps=query_timestamps,
            time_buckets=spec.time_buckets(query_timestamps, key_timestamps) if spec.use_time_bias else None,
            masked_out=block.masked_out,
            block=block,
        )

    def position_bias(self, position_weights: torch.Tensor, seq_len: int) -> torch.Tensor:
        """(B, 1, P, T) ``w_p[N_max - 1 + j - i]`` for block query positions i and window key positions j."""
        return position_weights[self.block.relative_positions]


class RecommenderCacheLayer(CacheLayerMixin):
    """Keys and values (B, H, T, d) of one layer at each token position of the window. When a window outgrows T, T
    becomes twice that window (at most the largest window): appending rarely copies them, and a window encoded once
    (a history of n events) takes its next events without a copy."""

    is_compileable = False
    is_croppable = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor, batch_size: int) -> None:
        self.device = key_states.device
        self.keys = key_states.new_zeros(batch_size, key_states.shape[1], 0, key_states.shape[-1])
        self.values = value_states.new_zeros(batch_size, value_states.shape[1], 0, value_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, block: CachedBlock, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the block's (B, H, P, d) keys and values at their window positions; return the window's keys and
        values (B, H, T, d)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states, block.cache_rows)
        if self.keys.shape[2] < block.width:
            grow = min(2 * block.width, block.capacity) - self.keys.shape[2]  # windows never pass capacity
            self.keys = F.pad(self.keys, (0, 0, 0, grow))
            self.values = F.pad(self.values, (0, 0, 0, grow))
        self.keys[block.cache_row_index, :, block.write_positions] = key_states[block.rows, :, block.cols]
        self.values[block.cache_row_index, :, block.write_positions] = value_states[block.rows, :, block.cols]
        if block.batch_rows is None:
            return self.keys[:, :, : block.width], self.values[:, :, : block.width]
        return self.keys[block.batch_rows, :, : block.width], self.values[block.batch_rows, :, : block.width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length(), 0

    def get_seq_length(self) -> int:
        return 0 if not self.is_initialized else self.keys.shape[2]

    def get_max_length(self) -> int:
        return -1

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys = self.keys[indices]
            self.values = self.values[indices]


@dataclass(frozen=True)
class CacheStep:
    """One cached forward pass: each row's window after appending the new events (right-padded (B, W) raw events,
    zero at padding), the first window event whose outputs are (re)computed (`start`, (B,)) and the rows whose
    window slid (`slid`, (B,) bool; their `start` is 0 and no keys or values of theirs are cached)."""

    input_ids: torch.Tensor
    timestamps: torch.Tensor
    ratings: torch.Tensor | None
    lengths: torch.Tensor
    start: torch.Tensor
    slid: torch.Tensor

    def select(self, rows: torch.Tensor) -> CacheStep:
        """The given rows, trimmed to their longest window."""
        width = int(self.lengths[rows].max())

        def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[rows, :width]

        return CacheStep(
            take(self.input_ids),
            take(self.timestamps),
            take(self.ratings),
            self.lengths[rows],
            self.start[rows],
            self.slid[rows],
        )


class SequentialRecommenderCache(Cache):
    """`cache` of HSTU and SASRec: a batch of user histories encoded so far, to continue with new events.

    Holds, per row, the raw events of the kept window (the most recent `max_seq_len`: item ids, timestamps, and ratings
    where the model reads them),
    each layer's keys and values at every token position of that window ((B, T, H, d) per layer,
    `RecommenderCacheLayer`), and the ids of every item of the history given so far (for `filter_seen`; one int64
    per event). `model(input_ids=new_ids, timestamps=new_times, cache=cache, target_timestamps=...)`
    appends the new events of each row in place and recomputes, from the cached keys and values, only what the
    appended events make invalid (see the module docstring): the results equal a full recompute of the whole
    history (its most recent `max_seq_len` events) up to float rounding. Rows may append different numbers of events,
    zero included (then only the request time changes). Eager attention only; inference only.
    """

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=RecommenderCacheLayer)
        self.input_ids: torch.Tensor | None = None  # (B, W) raw events of each row's window, right-padded
        self.timestamps: torch.Tensor | None = None
        self.ratings: torch.Tensor | None = None
        self.lengths: torch.Tensor | None = None  # (B,) events in each row's window
        self.seen_item_ids: torch.Tensor | None = None  # (B, S) every item id given so far, 0 = padding
        self.keys_cached: torch.Tensor | None = None  # (B,) bool: the layers hold the row's keys and values

    @property
    def batch_size(self) -> int | None:
        """Rows of the cache, None before the first forward pass."""
        return None if self.lengths is None else self.lengths.shape[0]

    def append_events(
        self,
        input_ids: torch.Tensor,
        timestamps: torch.Tensor,
        ratings: torch.Tensor | None,
        lengths: torch.Tensor,
        seen_item_ids: torch.Tensor,
        max_seq_len: int,
    ) -> CacheStep:
        """Append each row's new events ((B, N) right-padded, `lengths` (B,) of them, possibly 0) to its window,
        keep the most recent `max_seq_len`, and say from which window event on the outputs must be recomputed: the
        last cached event of a row whose window did not slide, the first of one that slid (or a new cache)."""
        if self.lengths is None:
            if (lengths == 0).any():
                row = int(torch.nonzero(lengths == 0)[0])
                raise ValueError(f"input_ids row {row} has no event: a new cache needs at least one event per row.")
            empty = input_ids[:, :0]
            self.input_ids, self.timestamps, self.lengths = empty, empty, torch.zeros_like(lengths)
            self.ratings = None if ratings is None else empty
            self.seen_item_ids = empty
            self.keys_cached = lengths == 0
        elif lengths.shape[0] != self.lengths.shape[0]:
            raise ValueError(
                f"input_ids has {lengths.shape[0]} rows but cache holds {self.lengths.shape[0]} histories."
            )
        total = self.lengths + lengths
        kept = total.clamp(max=max_seq_len)
        dropped = total - kept
        # Column c of a row's new window is event dropped + c of its history: a column of [old window | new events].
        old_width, appended_width = self.input_ids.shape[1], self.input_ids.shape[1] + input_ids.shape[1]
        events = dropped.unsqueeze(1) + torch.arange(int(kept.max()), device=lengths.device)  # (B, W)
        old_lengths = self.lengths.unsqueeze(1)
        source = torch.where(events < old_lengths, events, events - old_lengths + old_width)
        source = source.clamp(max=appended_width - 1)
        real = events < total.unsqueeze(1)

        def window(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.cat([old, new], dim=1).gather(1, source) * real

        slid = dropped > 0
        start = torch.where(slid | ~self.keys_cached, 0, self.lengths - 1)
        self.keys_cached = ~slid
        self.input_ids = window(self.input_ids, input_ids)
        self.timestamps = window(self.timestamps, timestamps)
        self.ratings = None if ratings is None else window(self.ratings, ratings)
        self.lengths = kept
        self.seen_item_ids = torch.cat([self.seen_item_ids, seen_item_ids], dim=1)
        return CacheStep(self.input_ids, self.timestamps, self.ratings, kept, start, slid)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Events in the longest window."""
        return 0 if self.lengths is None else int(self.lengths.max())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices`."""
        super().batch_select_indices(indices)
        for name in ("input_ids", "timestamps", "ratings", "lengths", "seen_item_ids", "keys_cached"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[indices])
