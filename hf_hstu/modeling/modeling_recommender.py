"""What every sequential recommender of this package shares: input checking and padding, item embeddings,
input/output processing, the next-item training loss and `recommend`. Model bodies only implement `encode`."""

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from .cache_recommender import CachedBlock, CacheStep, SequentialRecommenderCache
from .checkpoint_files import naming_corrupt_weights
from .configuration_recommender import SequentialRecommenderConfig
from .input_preprocessors import INPUT_PREPROCESSORS, LearnablePositionalInputPreprocessor, build_output_postprocessor
from .item_features import ItemFeatureEmbeddings
from .losses import build_loss
from .retrieval import top_k_items
from .similarity import Similarity, build_similarity

# Label value ignored by the loss besides the padding id 0 (the transformers convention).
IGNORE_INDEX = -100


@dataclass
class SequentialRecommenderOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
        Next-item training loss averaged over the supervised positions.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Output embedding of every position, in the layout of `input_ids` (zeros at padding and at positions dropped
        by truncation to `max_seq_len`). Position i's embedding scores candidates for the event after i.
    user_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The output embedding of each sequence's last real position: the user representation for the next item.
    cache (`SequentialRecommenderCache`, *optional*, returned when `use_cache=True` or a `cache` is given):
        The encoded histories, to continue with new events (incremental inference).
    """

    loss: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    user_embeddings: torch.FloatTensor | None = None
    cache: Cache | None = None


@dataclass
class RecommendationOutput(ModelOutput):
    r"""
    item_ids (`torch.LongTensor` of shape `(batch_size, k)`):
        Recommended item ids, best first.
    scores (`torch.FloatTensor` of shape `(batch_size, k)`):
        Their similarity scores (the logits of the training loss times the temperature).
    """

    item_ids: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None


@dataclass
class EventBatch:
    """Inputs checked and moved to right padding, truncated to the most recent `max_seq_len` events.

    All (B, W) tensors are zero at padding; `labels` holds the item each position predicts (the next event's label,
    0 where there is none); `source_positions` (B, W) maps each kept position back to its column in the caller's
    (B, N) layout, N = `input_length`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    timestamps: torch.Tensor
    ratings: torch.Tensor | None
    labels: torch.Tensor | None
    target_timestamps: torch.Tensor | None
    lengths: torch.Tensor
    source_positions: torch.Tensor
    input_length: int

    def select(self, rows: torch.Tensor) -> "EventBatch":
        """The given rows, trimmed to their longest sequence."""
        width = int(self.lengths[rows].max())

        def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[rows, :width]

        return EventBatch(
            input_ids=take(self.input_ids),
            attention_mask=take(self.attention_mask),
            timestamps=take(self.timestamps),
            ratings=take(self.ratings),
            labels=take(self.labels),
            target_timestamps=None if self.target_timestamps is None else self.target_timestamps[rows],
            lengths=self.lengths[rows],
            source_positions=take(self.source_positions),
            input_length=self.input_length,
        )


def _as_tensor(name: str, value, device: torch.device, dims: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """`value` as an int64 tensor on `device` with `dims` dimensions (and `shape` when given), or a ValueError."""
    tensor = torch.as_tensor(value, device=device)
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {tensor.dtype}.")
    if tensor.dim() != dims or (shape is not None and tuple(tensor.shape) != shape):
        expected = tuple(shape) if shape is not None else f"{dims} dimensions"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}.")
    return tensor.long()


def _check_range(name: str, values: torch.Tensor, valid: torch.Tensor, low: int, high: int) -> None:
    """A ValueError naming the first `valid` position of the (B, N) `values` outside [low, high]."""
    if values.numel():
        smallest, largest = torch.aminmax(values)
        if low <= smallest and largest <= high:  # one pass settles the usual case (a step's 2M negatives: 6x faster)
            return
    bad = valid & ((values < low) | (values > high))
    if bad.any():
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name}[{row}, {col}] = {int(values[row, col])} is outside [{low}, {high}].")


def _truncated_normal_(tensor: torch.Tensor, std: float) -> None:
    """Normal with `std`, cut at two standard deviations (the research code's `truncated_normal`)."""
    init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def init_default_linear_bias(linear: nn.Linear) -> None:
    """PyTorch's default bias of a linear (or 1x1 convolution) layer, uniform in ±1/sqrt(fan_in): what the research
    code's layers keep where its resets skip vectors."""
    bound = 1.0 / math.sqrt(linear.in_features)
    init.uniform_(linear.bias, -bound, bound)


def _last_states(hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, W, D) right-padded states -> (B, D) state of each row's last real position."""
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), lengths - 1]


def states_at(hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T, D) states -> (B, P, D) those at the (B, P) `positions` of each row."""
    return hidden_states.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))


def _window_batch(step: CacheStep, target_timestamps: torch.Tensor | None) -> EventBatch:
    """The windows of a cache step as an `EventBatch` (for the ordinary forward pass)."""
    width = step.input_ids.shape[1]
    return EventBatch(
        input_ids=step.input_ids,
        attention_mask=torch.arange(width, device=step.input_ids.device) < step.lengths.unsqueeze(1),
        timestamps=step.timestamps,
        ratings=step.ratings,
        labels=None,
        target_timestamps=target_timestamps,
        lengths=step.lengths,
        source_positions=None,
        input_length=width,
    )


def next_event_timestamps(
    timestamps: torch.Tensor, lengths: torch.Tensor, target_timestamps: torch.Tensor | None
) -> torch.Tensor:
    """(B, T) time of the event each position predicts: the next position's time, and for the last real position
    the request time `target_timestamps` (B,) when given, else its own time."""
    width = timestamps.shape[1]
    # A gather rather than a (B, T - 1) slice and a cat: the slice makes torch.export specialise on T (export.py).
    next_positions = torch.arange(1, width + 1, device=timestamps.device).clamp(max=width - 1)
    shifted = timestamps.gather(1, next_positions.expand_as(timestamps))
    last = (lengths - 1).unsqueeze(1)
    last_time = target_timestamps.unsqueeze(1) if target_timestamps is not None else timestamps.gather(1, last)
    return shifted.scatter(1, last, last_time)


class SequentialRecommenderPreTrainedModel(PreTrainedModel):
    """Base class of HSTU and SASRec: everything but the sequence encoder (`encode`)."""

    config: SequentialRecommenderConfig
    base_model_prefix = "recommender"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = False
    accepts_loss_kwargs = False

    def __init__(self, config: SequentialRecommenderConfig) -> None:
        super().__init__(config)
        self._length_group_size: int | None = None
        self.item_embeddings = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=0)
        self.item_features = ItemFeatureEmbeddings(config) if config.has_item_features else None
        self.input_preprocessor = INPUT_PREPROCESSORS[config.input_preprocessor](config)
        self.output_postprocessor = build_output_postprocessor(config)
        self.similarity = build_similarity(config)
        self.training_loss = build_loss(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a truncated or corrupt weights file raises `CorruptWeightsError` naming
        the file and what is wrong with it."""
        with naming_corrupt_weights(
            pretrained_model_name_or_path, kwargs.get("revision"), kwargs.get("subfolder") or ""
        ):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @property
    def requires_timestamps(self) -> bool:
        """Whether `forward` needs `timestamps`."""
        return False

    @property
    def requires_target_timestamps(self) -> bool:
        """Whether `recommend` needs the request time `target_timestamps` (the context of the recommendation)."""
        return False

    @property
    def requires_ratings(self) -> bool:
        """Whether the input preprocessor reads `ratings`."""
        return self.config.input_preprocessor != "learnable_positional"

    def embed_items(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(..., D) input embedding of `item_ids` (any shape): the id embedding, plus the item's feature embedding
        when the config has item features."""
        embeddings = self.item_embeddings(item_ids)
        if self.item_features is not None:
            embeddings = embeddings + self.item_features(item_ids)
        return embeddings

    def item_weight(self, cold_start_items: bool = False) -> torch.Tensor:
        """(num_items + 1, D) embedding of every item (`embed_items` of 0..num_items; row 0 = padding). With
        `cold_start_items`, items that never occurred in training (`item_features.trained_items`) are embedded from
        their features alone: their id embedding, never trained as an input, is left out."""
        weight = self.item_embeddings.weight
        if self.item_features is None:
            if cold_start_items:
                raise ValueError(
                    "cold_start_items needs item features (config.item_feature_names): this model has none."
                )
            return weight
        if cold_start_items:
            weight = weight * self.item_features.trained_items.unsqueeze(1).to(weight.dtype)
        return weight + self.item_features()

    def item_table(self, cold_start_items: bool = False) -> torch.Tensor:
        """(num_items + 1, R) item representations that the similarity scores users against (row 0 = padding); see
        `item_weight` for `cold_start_items`."""
        return self.similarity.item_table(self.item_weight(cold_start_items))

    def set_item_features(self, feature_codes: torch.Tensor, trained_items: torch.Tensor | None = None) -> None:
        """Store the item -> category table (and which items occurred in training) in the model's buffers, so that
        the checkpoint carries them (see `ItemFeatureEmbeddings.set_table`)."""
        if self.item_features is None:
            raise ValueError("This model has no item features (config.item_feature_names is None).")
        self.item_features.set_table(feature_codes, trained_items)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embeddings = value

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """Initialise `module` unless transformers marked it initialised (loaded).

        For code outside transformers, transformers also skips a module whose own parameters are all loaded, in case
        its `_init_weights` writes tensors in place. That includes every module without parameters of its own
        (HSTU attention, the input preprocessors), whose `_init_weights` would then never run. Every write of
        `_init_weights` here goes through `transformers.initialization`, which leaves loaded tensors alone, so
        that check is not needed: `from_pretrained` still re-initialises nothing it loaded. (`is_custom_code` is
        not passed on, so the base class takes its default, False, in every transformers version.)
        """
        super()._initialize_weights(module)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The research code's effective initialisation (stated in [`SequentialRecommenderConfig`]). Modules are
        visited children first, so a container's rule overrides the generic one of its layers."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # the item embeddings; the preprocessor's tables are set below
            _truncated_normal_(module.weight, std)
            # The padding row is a slice, which does not carry the weight's "already loaded" flag: check it here.
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, LearnablePositionalInputPreprocessor):
            self._init_input_preprocessor(module)
        elif isinstance(module, Similarity):
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    init.xavier_normal_(parameter)
                else:
                    init.zeros_(parameter)

    def _init_input_preprocessor(self, module: LearnablePositionalInputPreprocessor) -> None:
        """The research preprocessors' own initialisation: position and rating tables truncated normal with std
        sqrt(1 / D); the `"rated"` projection xavier-normal. HSTU overrides it (its reset re-initialises them)."""
        table_std = math.sqrt(1.0 / self.config.hidden_size)
        _truncated_normal_(module.position_embeddings.weight, table_std)
        if hasattr(module, "rating_embeddings"):
            _truncated_normal_(module.rating_embeddings.weight, table_std)
        if hasattr(module, "rating_proj"):
            init.xavier_normal_(module.rating_proj.weight)

    def encode(
        self,
        token_embeddings: torch.Tensor,
        token_mask: torch.Tensor,
        token_timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
    ) -> torch.Tensor:
        """The sequence encoder: (B, T, D) right-padded token embeddings -> (B, T, D) token outputs.

        Args:
            token_embeddings: (B, T, D), zero at padding.
            token_mask: (B, T) bool, True for real tokens (a prefix of each row).
            token_timestamps: (B, T) int64 time of each token's event.
            query_timestamps: (B, T) int64 time of the event each position predicts.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement encode()")

    def encode_last(
        self,
        token_embeddings: torch.Tensor,
        token_mask: torch.Tensor,
        token_timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
        num_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """(B, D) output of each row's last real token (position `num_tokens - 1`), all `embed_users` needs; the
        other arguments are those of `encode`. This default takes it from the whole `encode`; the model bodies
        override it to compute only that token in their last layer (its query against every key)."""
        return _last_states(self.encode(token_embeddings, token_mask, token_timestamps, query_timestamps), num_tokens)

    def last_token_block(self, num_tokens: torch.Tensor, width: int) -> CachedBlock:
        """The block of each row's last real token (`num_tokens` (B,) real tokens of a window `width` wide): the one
        query of the last layer of `encode_last`."""
        return CachedBlock.from_starts(
            num_tokens - 1, num_tokens, 1, width, self.config.max_tokens, num_tokens.shape[0]
        )

    def encode_cached(
        self,
        token_embeddings: torch.Tensor,
        block: CachedBlock,
        key_timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
        cache: SequentialRecommenderCache,
    ) -> torch.Tensor:
        """`encode` of a block of a window's tokens, attending to the keys and values of the window's earlier tokens
        in `cache` and writing the block's into it (incremental inference).

        Args:
            token_embeddings: (B, P, D) the block's P tokens per row, zero at padding.
            block: where the block's tokens are in the window (`CachedBlock`).
            key_timestamps: (B, T) int64 time of every token of the window.
            query_timestamps: (B, P) int64 time of the event each block token predicts.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support incremental inference (cache)")

    def _prepare_batch(
        self,
        input_ids,
        attention_mask=None,
        timestamps=None,
        labels=None,
        target_timestamps=None,
        ratings=None,
        allow_empty: bool = False,
    ) -> EventBatch:
        """Check the inputs and move them to right padding, keeping the most recent `max_seq_len` events. With
        `allow_empty` (events appended to a cache) a row may have none.

        With `labels` and `config.training_window == "max_seq_len_plus_one"`, the most recent `max_seq_len + 1`
        events are read: the last of them is only the label of the position before it, and its time that
        position's query time (`target_timestamps`).
        """
        device = self.item_embeddings.weight.device
        input_ids = _as_tensor("input_ids", input_ids, device, dims=2)
        batch_size, seq_len = input_ids.shape
        if attention_mask is None:
            mask = input_ids != 0
        else:
            mask = _as_tensor("attention_mask", attention_mask, device, 2, (batch_size, seq_len)) != 0
        lengths = mask.sum(1)
        if not allow_empty and (lengths == 0).any():
            raise ValueError(
                f"attention_mask row {int(torch.nonzero(lengths == 0)[0])} has no item: every "
                "sequence needs at least one event."
            )
        first = mask.int().argmax(1)
        last = seq_len - 1 - mask.flip(1).int().argmax(1)
        gaps = (last - first + 1 != lengths) & (lengths > 0)
        if gaps.any():
            row = int(torch.nonzero(gaps)[0])
            raise ValueError(
                f"attention_mask row {row} has a gap: the real events must be contiguous (left or right padding)."
            )
        _check_range("input_ids", input_ids, mask, 1, self.config.num_items)

        if timestamps is None:
            if self.requires_timestamps:
                raise ValueError(
                    f"timestamps are required: {type(self).__name__} uses a time bias "
                    "(config.use_time_bias=True). Pass unix-second timestamps of shape (batch, seq_len)."
                )
            timestamps = torch.zeros_like(input_ids)
        timestamps = _as_tensor("timestamps", timestamps, device, 2, (batch_size, seq_len))
        _check_range("timestamps", timestamps, mask, 0, torch.iinfo(torch.int64).max)
        if ratings is None and self.requires_ratings:
            raise ValueError(f"ratings are required by input_preprocessor='{self.config.input_preprocessor}'.")
        if ratings is not None:
            ratings = _as_tensor("ratings", ratings, device, 2, (batch_size, seq_len))
            _check_range("ratings", ratings, mask, 0, self.config.num_ratings)
        if labels is not None:
            labels = _as_tensor("labels", labels, device, 2, (batch_size, seq_len))
            labels = labels.masked_fill(labels == IGNORE_INDEX, 0)
            _check_range("labels", labels, mask, 0, self.config.num_items)
        if target_timestamps is not None:
            target_timestamps = _as_tensor("target_timestamps", target_timestamps, device, 1, (batch_size,))

        window = self.config.max_training_events if labels is not None else self.config.max_seq_len
        kept = lengths.clamp(max=window)
        start = first + lengths - kept  # drop the oldest events beyond the window
        offsets = torch.arange(int(kept.max()), device=device)
        source_positions = (start.unsqueeze(1) + offsets).clamp(max=seq_len - 1)  # (B, W)
        valid = offsets < kept.unsqueeze(1)

        def to_right_padding(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.gather(1, source_positions) * valid

        timestamps = to_right_padding(timestamps)
        if labels is not None:
            labels = F.pad(to_right_padding(labels)[:, 1:], (0, 1))  # position i predicts the event at i + 1
        encoded, width = kept, offsets.shape[0]
        if window > self.config.max_seq_len:  # training with one more event, which only a label may be
            encoded = kept.clamp(max=self.config.max_seq_len)
            label_only = kept > encoded  # rows whose most recent kept event is only a label
            if label_only.any():
                label_times = timestamps.gather(1, (kept - 1).unsqueeze(1)).squeeze(1)  # own last time where not
                target_timestamps = (
                    label_times
                    if target_timestamps is None
                    else torch.where(label_only, label_times, target_timestamps)
                )
            width = int(encoded.max())

        def encoded_part(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[:, :width]

        return EventBatch(
            input_ids=encoded_part(to_right_padding(input_ids)),
            attention_mask=encoded_part(valid),
            timestamps=encoded_part(timestamps),
            ratings=encoded_part(to_right_padding(ratings)),
            labels=encoded_part(labels),
            target_timestamps=target_timestamps,
            lengths=encoded,
            source_positions=encoded_part(source_positions),
            input_length=seq_len,
        )

    def _encoder_inputs(self, batch: EventBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The arguments of `encode` for a batch: (B, T, D) tokens, (B, T) token mask, token times and query times."""
        item_embeddings = self.embed_items(batch.input_ids)
        tokens, token_mask, token_timestamps = self.input_preprocessor(
            item_embeddings, batch.attention_mask, batch.timestamps, batch.ratings
        )
        query_timestamps = next_event_timestamps(
            token_timestamps, batch.lengths * self.config.tokens_per_event, batch.target_timestamps
        )
        return tokens, token_mask, token_timestamps, query_timestamps

    def _encode_events(self, batch: EventBatch) -> torch.Tensor:
        """(B, W, D) post-processed output embedding of each event, zero at padding."""
        token_states = self.encode(*self._encoder_inputs(batch))
        event_states = self.output_postprocessor(self.input_preprocessor.readout(token_states))
        return event_states * batch.attention_mask.unsqueeze(-1)

    def _encode_last_events(self, batch: EventBatch) -> torch.Tensor:
        """(B, D) post-processed output embedding of each row's last event: `_encode_events` at the last event, from
        `encode_last` (an event's output is its last token's, see the input preprocessors' `readout`)."""
        last_tokens = self.encode_last(*self._encoder_inputs(batch), batch.lengths * self.config.tokens_per_event)
        return self.output_postprocessor(last_tokens)

    @property
    def length_group_size(self) -> int | None:
        """A computation setting, not part of the model (never saved): the encoder sorts a batch by length and encodes
        it in groups of this many sequences, each trimmed to its longest, so less is spent on padding and the
        (group, N, N) attention temporaries stay cache-sized. `0` encodes the whole batch at once; `None` (the
        default) means groups of 32 for CPU tensors (1.5x faster training steps there; 16 in `embed_users`, whose
        one-token last layer leaves the (group, N, N) temporaries of the first layers as the main cost: 1.2x faster)
        and the whole batch on accelerators. Results do not depend on it beyond float rounding."""
        return self._length_group_size

    @length_group_size.setter
    def length_group_size(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"length_group_size must be None or an integer >= 0, got {value!r}.")
        self._length_group_size = value

    def group_size_for(self, device: torch.device, user_embeddings: bool = False) -> int:
        """Sequences encoded together for tensors on `device`, in `embed_users` when `user_embeddings` (see
        `length_group_size`)."""
        if self.length_group_size is not None:
            return self.length_group_size
        if device.type != "cpu":
            return 0
        return 16 if user_embeddings else 32

    @staticmethod
    def _length_groups(batch: EventBatch, group_size: int) -> Iterator[tuple[torch.Tensor, EventBatch]]:
        """(rows, sub-batch) for groups of at most `group_size` rows (all rows when 0) of similar length, longest
        first, each trimmed to its longest sequence."""
        order = torch.argsort(batch.lengths, descending=True, stable=True)
        step = group_size or order.shape[0]
        for start in range(0, order.shape[0], step):
            rows = order[start : start + step]
            yield rows, batch.select(rows)

    def _encode_in_length_groups(self, batch: EventBatch) -> torch.Tensor:
        """`_encode_events` of the batch, computed group by group (see `length_group_size`)."""
        group_size = self.group_size_for(batch.input_ids.device)
        if group_size == 0 or group_size >= batch.input_ids.shape[0]:
            return self._encode_events(batch)
        width = batch.input_ids.shape[1]
        group_rows, group_states = [], []
        for rows, group in self._length_groups(batch, group_size):
            states = self._encode_events(group)  # (G, w, D), w <= W
            group_rows.append(rows)
            group_states.append(F.pad(states, (0, 0, 0, width - states.shape[1])))
        return torch.cat(group_states)[torch.argsort(torch.cat(group_rows))]

    def _forward_cached(
        self,
        input_ids,
        attention_mask,
        timestamps,
        target_timestamps,
        ratings,
        cache: SequentialRecommenderCache | None,
    ) -> SequentialRecommenderOutput:
        """`forward` with a cache: append the new events (possibly none) to each row of `cache` (a new one when None)
        and compute what they change (see `SequentialRecommenderCache`)."""
        cache = SequentialRecommenderCache() if cache is None else cache
        new, event_states, block_events = self._encode_with_cache(
            input_ids, attention_mask, timestamps, target_timestamps, ratings, cache
        )
        last_hidden_state = event_states.new_zeros(new.input_ids.shape[0], new.input_length, event_states.shape[-1])
        rows, cols = torch.nonzero(new.attention_mask, as_tuple=True)
        first_new = block_events - new.lengths  # block index of each row's first new event
        last_hidden_state[rows, new.source_positions[rows, cols]] = event_states[rows, first_new[rows] + cols]
        return SequentialRecommenderOutput(
            last_hidden_state=last_hidden_state[:, : 0 if input_ids is None else None],
            user_embeddings=_last_states(event_states, block_events),
            cache=cache,
        )

    def _encode_with_cache(
        self,
        input_ids,
        attention_mask,
        timestamps,
        target_timestamps,
        ratings,
        cache: SequentialRecommenderCache,
        last_only: bool = False,
    ) -> tuple[EventBatch, torch.Tensor, torch.Tensor]:
        """Append the new events to `cache` and compute the events they change: (the new events as an `EventBatch`,
        (B, P, D) post-processed states of each row's computed events, right-padded, the new ones last, (B,) how
        many events of each row were computed). With `last_only` (user embeddings) a row whose window slid gets
        only its last event's state (`_encode_last_events`), the other places left zero."""
        if self.training:
            raise ValueError(
                "use_cache and cache are for inference: call model.eval() first (training encodes whole histories, "
                "with dropout)."
            )
        if not isinstance(cache, SequentialRecommenderCache):
            raise TypeError(
                f"cache must be the SequentialRecommenderCache a previous call returned, got {type(cache).__name__}."
            )
        device = self.item_embeddings.weight.device
        if input_ids is None:
            if cache.batch_size is None:
                raise ValueError("input_ids is required unless cache holds encoded histories.")
            input_ids = attention_mask = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
            timestamps, ratings = input_ids, (input_ids if self.requires_ratings else None)
        new = self._prepare_batch(input_ids, attention_mask, timestamps, None, target_timestamps, ratings, True)
        seen = _as_tensor("input_ids", input_ids, device, dims=2)
        if attention_mask is not None:
            seen = seen * (torch.as_tensor(attention_mask, device=device) != 0)
        ratings = new.ratings if self.requires_ratings else None  # the cache keeps what the model reads
        step = cache.append_events(new.input_ids, new.timestamps, ratings, new.lengths, seen, self.config.max_seq_len)

        block_events = step.lengths - step.start  # (B,) events computed in each row, the new ones last
        if not step.slid.any():
            groups = self._cached_block_groups(block_events * self.config.tokens_per_event)
        else:  # windows that slid: the ordinary forward pass; the others through the cache
            kept_rows = torch.nonzero(~step.slid).flatten()
            groups = [torch.nonzero(step.slid).flatten()]
            if kept_rows.numel():
                groups += self._cached_block_groups(block_events[kept_rows] * self.config.tokens_per_event, kept_rows)
        if groups is None:
            event_states = self._encode_cached_block(step, new.target_timestamps, cache)
        else:
            event_states = self.item_embeddings.weight.new_zeros(
                block_events.shape[0], int(block_events.max()), self.config.hidden_size
            )
            for rows in groups:
                target = None if new.target_timestamps is None else new.target_timestamps[rows]
                rows_step = step.select(rows)
                if rows_step.slid.any() and last_only:  # (G, D) the last event of each window
                    states = self._last_event_states(_window_batch(rows_step, target))
                    event_states[rows, rows_step.lengths - 1] = states
                    continue
                if rows_step.slid.any():  # (G, W, D) the whole windows
                    states = self._encode_in_length_groups(_window_batch(rows_step, target))
                else:  # (G, P_g, D) the blocks
                    states = self._encode_cached_block(rows_step, target, cache, rows)
                event_states[rows, : states.shape[1]] = states
        return new, event_states, block_events

    def _cached_block_groups(
        self, block_tokens: torch.Tensor, rows: torch.Tensor | None = None
    ) -> list[torch.Tensor] | None:
        """Rows (of `rows`, or of the batch) whose cached blocks are computed together, longest first, each group
        holding at most the tokens of `length_group_size` full windows (a few new events of many rows at once, whole
        windows a few rows at a time); None for the whole batch at once."""
        group_size = self.group_size_for(block_tokens.device)
        if group_size == 0 or group_size >= block_tokens.shape[0]:
            return None if rows is None else [rows]
        budget = group_size * self.config.max_tokens
        order = torch.argsort(block_tokens, descending=True, stable=True)
        sizes = block_tokens[order].tolist()
        groups, start = [], 0
        while start < len(sizes):
            count = max(1, budget // sizes[start])
            groups.append(order[start : start + count] if rows is None else rows[order[start : start + count]])
            start += count
        return None if len(groups) == 1 and rows is None else groups

    def _encode_cached_block(
        self,
        step: CacheStep,
        target_timestamps: torch.Tensor | None,
        cache: SequentialRecommenderCache,
        batch_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, P, D) post-processed outputs of the events `step.start` .. `step.lengths - 1` of each row (zero at
        padding), from the window's cached keys and values (rows `batch_rows` of the cache, or all)."""
        device = step.input_ids.device
        tokens_per_event = self.config.tokens_per_event
        block_events = step.lengths - step.start
        event_mask = torch.arange(int(block_events.max()), device=device) < block_events.unsqueeze(1)
        event_positions = (step.start.unsqueeze(1) + torch.arange(event_mask.shape[1], device=device)).clamp(
            max=step.input_ids.shape[1] - 1
        )

        def block_of(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.gather(1, event_positions) * event_mask

        tokens, _, _ = self.input_preprocessor(
            self.embed_items(block_of(step.input_ids)),
            event_mask,
            block_of(step.timestamps),
            block_of(step.ratings),
            first_events=step.start,
        )
        token_timestamps = step.timestamps.repeat_interleave(tokens_per_event, dim=1)  # (B, T) the window's tokens
        query_timestamps = next_event_timestamps(token_timestamps, step.lengths * tokens_per_event, target_timestamps)
        block = CachedBlock.from_starts(
            step.start * tokens_per_event,
            step.lengths * tokens_per_event,
            event_mask.shape[1] * tokens_per_event,
            token_timestamps.shape[1],
            self.config.max_tokens,
            cache.batch_size,
            batch_rows,
        )
        token_states = self.encode_cached(
            tokens, block, token_timestamps, query_timestamps.gather(1, block.positions), cache
        )
        return self.output_postprocessor(self.input_preprocessor.readout(token_states)) * event_mask[..., None]

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        timestamps: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        target_timestamps: torch.LongTensor | None = None,
        ratings: torch.LongTensor | None = None,
        negative_ids: torch.LongTensor | None = None,
        cache: SequentialRecommenderCache | None = None,
        use_cache: bool = False,
        **kwargs,
    ) -> SequentialRecommenderOutput:
        r"""
        Encode padded histories and, given `labels`, compute the next-item loss.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Item ids in `1..num_items`, oldest first; padding (id 0) on either side. Histories longer than
                `config.max_seq_len` are truncated to their most recent `max_seq_len` events.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real events, 0 for padding; defaults to `input_ids != 0`. Real events must be contiguous.
            timestamps (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Unix seconds of each event; required when the model uses a time bias.
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Aligned with `input_ids` (pass `labels=input_ids`): position i is trained to predict `labels[i + 1]`.
                0 and -100 are ignored. With `config.training_window == "max_seq_len_plus_one"` the window of a
                longer sequence is its most recent `max_seq_len + 1` events, the last of them only a label.
            target_timestamps (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Time of the event to predict after the last position (the request time).
            ratings (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Ratings `1..num_ratings` (0 = unknown); required by the rated input preprocessors.
            negative_ids (`torch.LongTensor` of shape `(num_supervised, num_negatives)`, *optional*):
                Negatives for the loss instead of sampling them: one row per supervised position, in row-major
                order of (sequence, position) over the right-aligned events (each position whose next event is in
                the window).
            cache (`SequentialRecommenderCache`, *optional*):
                The cache of the histories so far (returned by a call with `use_cache=True`): then `input_ids`,
                `attention_mask`, `timestamps` and `ratings` hold only the new events of each row (any number, none
                included; `input_ids=None` for none at all), which are appended to the cache in place, and
                `last_hidden_state` covers the new events. Eval mode only, no `labels`.
            use_cache (`bool`, *optional*, defaults to `False`):
                Return the encoded histories as `cache` (a new one when none is given). `past_key_values`, the name
                before transformers 5's rename, is accepted for `cache` (with a deprecation warning).
        """
        if use_cache or cache is not None:
            if labels is not None or negative_ids is not None:
                raise ValueError("labels cannot be combined with use_cache or cache: the cache is for inference.")
            return self._forward_cached(input_ids, attention_mask, timestamps, target_timestamps, ratings, cache)
        batch = self._prepare_batch(input_ids, attention_mask, timestamps, labels, target_timestamps, ratings)
        hidden_states = self._encode_in_length_groups(batch)  # (B, W, D)
        batch_size = hidden_states.shape[0]
        user_embeddings = _last_states(hidden_states, batch.lengths)

        loss = None
        if batch.labels is not None:
            next_labels = batch.labels  # position i predicts the item at i + 1
            supervised = next_labels != 0
            num_supervised = int(supervised.sum())
            if negative_ids is not None:
                negative_ids = _as_tensor("negative_ids", negative_ids, hidden_states.device, dims=2)
                if negative_ids.shape[0] != num_supervised:
                    raise ValueError(
                        f"negative_ids must have one row per supervised position ({num_supervised}), "
                        f"got {negative_ids.shape[0]}."
                    )
                _check_range(
                    "negative_ids",
                    negative_ids,
                    torch.ones_like(negative_ids, dtype=torch.bool),
                    1,
                    self.config.num_items,
                )
            if num_supervised:
                loss = self.training_loss(
                    hidden_states[supervised],
                    next_labels[supervised],
                    self.item_table(),
                    self.similarity,
                    negative_ids,
                )
            else:  # no sequence has a next item: nothing to learn from this batch
                loss = hidden_states.sum() * 0.0

        last_hidden_state = hidden_states.new_zeros(batch_size, batch.input_length, hidden_states.shape[-1])
        rows, cols = torch.nonzero(batch.attention_mask, as_tuple=True)
        last_hidden_state[rows, batch.source_positions[rows, cols]] = hidden_states[rows, cols]
        return SequentialRecommenderOutput(
            loss=loss, last_hidden_state=last_hidden_state, user_embeddings=user_embeddings
        )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @torch.no_grad()
    def embed_users(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        timestamps: torch.LongTensor | None = None,
        target_timestamps: torch.LongTensor | None = None,
        ratings: torch.LongTensor | None = None,
        chunk_size: int | None = None,
        cache: SequentialRecommenderCache | None = None,
    ) -> torch.Tensor:
        r"""
        (batch_size, hidden_size) user embeddings (the `user_embeddings` of `forward`) in eval mode, computed in
        chunks of at most `chunk_size` rows of similar length (default: `group_size_for(device, user_embeddings=True)`,
        or 256 where that is the whole batch): memory stays bounded and little is spent on padding, whatever the
        batch. Inputs are those of `forward`; with `cache` they are the new events, appended to the cache in place
        (rows computed in groups of bounded size, see `_cached_block_groups`).
        """
        if input_ids is None and cache is None:
            raise ValueError("input_ids is required unless cache holds encoded histories.")
        if cache is not None:
            with self._eval_mode():
                _, event_states, block_events = self._encode_with_cache(
                    input_ids, attention_mask, timestamps, target_timestamps, ratings, cache, last_only=True
                )
            return _last_states(event_states, block_events)
        batch = self._prepare_batch(input_ids, attention_mask, timestamps, None, target_timestamps, ratings)
        with self._eval_mode():
            return self._last_event_states(batch, chunk_size)

    def _last_event_states(self, batch: EventBatch, group_size: int | None = None) -> torch.Tensor:
        """(B, D) `_encode_last_events` of a batch, in length groups of `group_size` rows (default: those of
        `embed_users`, or 256 where that is the whole batch)."""
        group_size = group_size or self.group_size_for(batch.input_ids.device, user_embeddings=True) or 256
        user_embeddings = None
        for rows, group in self._length_groups(batch, group_size):
            states = self._encode_last_events(group)
            if user_embeddings is None:
                user_embeddings = states.new_empty(batch.input_ids.shape[0], states.shape[-1])
            user_embeddings[rows] = states
        return user_embeddings

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode inside the block, the previous mode restored after; no switch (a walk over every module, a
        noticeable cost per recommendation of one user) when no module is in training mode."""
        was_training = self.training
        switch = any(module.training for module in self.modules())
        if switch:
            self.eval()
        try:
            yield
        finally:
            if switch:
                self.train(was_training)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @torch.no_grad()
    def recommend(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        timestamps: torch.LongTensor | None = None,
        target_timestamps: torch.LongTensor | None = None,
        k: int = 10,
        filter_seen: bool = True,
        candidate_ids: torch.LongTensor | None = None,
        ratings: torch.LongTensor | None = None,
        cache: SequentialRecommenderCache | None = None,
        cold_start_items: bool = False,
    ) -> RecommendationOutput:
        r"""
        Top-k next items for each history, scored against the whole catalogue (or `candidate_ids`).

        Runs in eval mode (no dropout; see `embed_users`) and restores the previous mode. Inputs are those of
        `forward`; histories
        longer than `max_seq_len` are truncated to their most recent events, but every item of the given history is
        filtered out when `filter_seen`.

        Args:
            target_timestamps (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                The request time (unix seconds). Required when `model.requires_target_timestamps`.
            k (`int`): items per user.
            filter_seen (`bool`): never return an item of the user's history.
            candidate_ids (`torch.LongTensor` of shape `(num_candidates,)` or `(batch_size, num_candidates)`,
                *optional*): restrict the ranking to these item ids.
            cache (`SequentialRecommenderCache`, *optional*):
                Rank from cached histories: the inputs are then the new events (or `input_ids=None`), appended to the
                cache in place, and `filter_seen` filters every item given to the cache so far.
            cold_start_items (`bool`): score the items that never occurred in training from their features alone
                (their untrained id embedding left out; see `item_weight`). Needs item features.

        Returns:
            [`RecommendationOutput`] with `item_ids` and `scores` of shape `(batch_size, k)`, best first. The padding
            id 0 is never returned.
        """
        if self.requires_target_timestamps and target_timestamps is None:
            raise ValueError(
                "target_timestamps is required: this model conditions on the time of the request "
                "(config.use_time_bias=True). Pass the unix time at which the recommendations are served, shape "
                "(batch_size,)."
            )
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        user_embeddings = self.embed_users(
            input_ids, attention_mask, timestamps, target_timestamps, ratings, cache=cache
        )
        device = user_embeddings.device
        exclude_ids = None
        if filter_seen and cache is not None:
            exclude_ids = cache.seen_item_ids
        elif filter_seen:
            exclude_ids = torch.as_tensor(input_ids, device=device).long()
            if attention_mask is not None:
                exclude_ids = exclude_ids * (torch.as_tensor(attention_mask, device=device) != 0)
        if candidate_ids is not None:
            candidate_ids = torch.as_tensor(candidate_ids, device=device)
            if candidate_ids.dim() not in (1, 2) or (
                candidate_ids.dim() == 2 and candidate_ids.shape[0] != user_embeddings.shape[0]
            ):
                raise ValueError(
                    f"candidate_ids must have shape (num_candidates,) or (batch_size, num_candidates), got "
                    f"{tuple(candidate_ids.shape)}."
                )
            candidate_ids = candidate_ids.long()
            if ((candidate_ids < 1) | (candidate_ids > self.config.num_items)).any():
                raise ValueError(f"candidate_ids must be item ids in [1, {self.config.num_items}].")
        item_ids, scores = top_k_items(
            user_embeddings, self.item_table(cold_start_items), self.similarity, k, exclude_ids, candidate_ids
        )
        return RecommendationOutput(item_ids=item_ids, scores=scores)
