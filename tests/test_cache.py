"""Incremental inference with a cache: appending events to cached histories gives the results of a full recompute."""

import pytest
import torch
from recommender_testing import VARIANTS, right_padded_batch, tiny_model
from transformers import Cache

from hf_hstu.modeling.cache_recommender import SequentialRecommenderCache

# Rows longer than max_seq_len (8 in the tiny configs) make the window slide.
LENGTHS = (6, 3, 12, 1, 9)
EVENT_KEYS = ("input_ids", "timestamps", "ratings")


def events(batch: dict, start: torch.Tensor, stop: torch.Tensor, left_padding: bool = False) -> dict:
    """Events start[b] .. stop[b] - 1 of each row of a right-padded batch, as a padded batch (rows may be empty)."""
    counts = stop - start
    width = max(int(counts.max()), 1)
    columns = torch.arange(width).unsqueeze(0)
    mask = columns < counts.unsqueeze(1)
    source = (start.unsqueeze(1) + columns).clamp(max=batch["input_ids"].shape[1] - 1)
    sliced = {key: batch[key].gather(1, source) * mask for key in EVENT_KEYS}
    sliced["attention_mask"] = mask.long()
    if left_padding:
        shift = (width - counts).unsqueeze(1)
        sliced = {
            key: value.gather(1, (columns - shift).clamp(min=0)) * (columns >= shift) for key, value in sliced.items()
        }
    return sliced


def request_times(batch: dict, stop: torch.Tensor, offset: int = 500) -> torch.Tensor:
    """A request time `offset` seconds after each row's event stop - 1."""
    return batch["timestamps"].gather(1, (stop - 1).unsqueeze(1)).squeeze(1) + offset


def full_recompute(model, batch: dict, stop: torch.Tensor, target_timestamps: torch.Tensor, left_padding: bool, k=10):
    history = events(batch, torch.zeros_like(stop), stop, left_padding)
    output = model(**history, target_timestamps=target_timestamps)
    ranking = model.recommend(**history, target_timestamps=target_timestamps, k=k)
    return history, output, ranking


@pytest.mark.parametrize("left_padding", [False, True], ids=["right-padding", "left-padding"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_appending_events_equals_a_full_recompute(variant, left_padding):
    """Every split of each history into a prefix and 1..3 appended events (rows of a ragged batch append different
    numbers, zero included), past max_seq_len too: user embeddings, the new events' states and the recommendation
    scores of the cached path equal those of a full recompute."""
    model_type, overrides = VARIANTS[variant]
    check_every_split(tiny_model(model_type, seed=1, **overrides).eval(), left_padding)


@pytest.mark.parametrize("variant", ["hstu", "sasrec"])
def test_rows_computed_in_groups_equal_a_full_recompute(variant):
    """With length_group_size 1 or 2 the rows' blocks are computed in groups (longest first; the rows whose window
    slides alone), reading and writing their own rows of the cache."""
    model_type, overrides = VARIANTS[variant]
    model = tiny_model(model_type, seed=1, **overrides).eval()
    for group_size in (1, 2):
        model.length_group_size = group_size
        check_every_split(model, left_padding=False)


def check_every_split(model, left_padding: bool) -> None:
    batch = right_padded_batch(seed=2, lengths=LENGTHS)
    lengths = batch["attention_mask"].sum(1)
    for prefix_len in range(1, int(lengths.max())):
        prefix_stop = torch.minimum(lengths, torch.tensor(prefix_len))
        for appended in (1, 2, 3):
            stop = torch.minimum(lengths, prefix_stop + appended)
            target = request_times(batch, stop)
            prefix = events(batch, torch.zeros_like(stop), prefix_stop, left_padding)
            cache = model(**prefix, use_cache=True).cache
            new = events(batch, prefix_stop, stop, left_padding)
            cached = model(**new, target_timestamps=target, cache=cache)
            history, full, full_ranking = full_recompute(model, batch, stop, target, left_padding)

            torch.testing.assert_close(cached.user_embeddings, full.user_embeddings, atol=1e-5, rtol=0)
            new_mask = new["attention_mask"].bool()
            full_new_states = full.last_hidden_state[history["attention_mask"].bool()]  # rows' events in order
            full_new_states = torch.cat(
                [
                    row_states[-int(count) :] if count else row_states[:0]
                    for row_states, count in zip(
                        full_new_states.split(stop.tolist()), (stop - prefix_stop).tolist(), strict=True
                    )
                ]
            )
            torch.testing.assert_close(cached.last_hidden_state[new_mask], full_new_states, atol=1e-5, rtol=0)

            cache = model(**prefix, use_cache=True).cache
            ranking = model.recommend(**new, target_timestamps=target, k=10, cache=cache)
            torch.testing.assert_close(ranking.scores, full_ranking.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["hstu", "hstu-combined-item-rating", "sasrec"])
def test_one_event_at_a_time_through_a_sliding_window(variant):
    """Appending one event per call from the first to the last, the window sliding once a row passes max_seq_len: at
    every step the cache holds the most recent max_seq_len events and ranks like a full recompute of the history
    (filter_seen excluding the items that left the window too)."""
    model_type, overrides = VARIANTS[variant]
    model = tiny_model(model_type, seed=3, **overrides).eval()
    batch = right_padded_batch(seed=4, lengths=(20, 20))
    cache = None
    for stop in range(1, 21):
        stop_tensor = torch.tensor([stop, stop])
        new = events(batch, stop_tensor - 1, stop_tensor)
        target = request_times(batch, stop_tensor, offset=60 * stop)
        if cache is None:
            cache = model(**new, use_cache=True).cache
            ranking = model.recommend(cache=cache, input_ids=None, target_timestamps=target, k=5)
        else:
            ranking = model.recommend(**new, target_timestamps=target, k=5, cache=cache)
        _, _, full_ranking = full_recompute(model, batch, stop_tensor, target, left_padding=False, k=5)
        assert torch.equal(ranking.item_ids, full_ranking.item_ids)
        torch.testing.assert_close(ranking.scores, full_ranking.scores, atol=1e-5, rtol=0)
        assert cache.get_seq_length() == min(stop, model.config.max_seq_len)
        window = batch["input_ids"][:, max(0, stop - model.config.max_seq_len) : stop]
        assert torch.equal(cache.input_ids, window)


def test_request_time_alone_changes_the_ranking_like_a_full_recompute():
    """`recommend(cache=..., target_timestamps=...)` without new events: the last position is recomputed at the new
    request time, the cache is unchanged."""
    model = tiny_model("hstu", seed=5).eval()
    with torch.no_grad():  # time weights far from their tiny initialisation: the request time matters
        for layer in model.layers:
            layer.attention.relative_bias.time_weights.normal_(0.0, 1.0)
    batch = right_padded_batch(seed=6, lengths=LENGTHS)
    lengths = batch["attention_mask"].sum(1)
    cache = model(**events(batch, torch.zeros_like(lengths), lengths), use_cache=True).cache
    embeddings = {}
    for offset in (60, 86_400 * 365):
        target = request_times(batch, lengths, offset)
        ranking = model.recommend(cache=cache, target_timestamps=target, k=10)
        _, full, full_ranking = full_recompute(model, batch, lengths, target, left_padding=False)
        torch.testing.assert_close(ranking.scores, full_ranking.scores, atol=1e-5, rtol=0)
        embeddings[offset] = model.embed_users(cache=cache, target_timestamps=target)
        torch.testing.assert_close(embeddings[offset], full.user_embeddings, atol=1e-5, rtol=0)
        assert cache.get_seq_length() == model.config.max_seq_len
    assert (embeddings[60] - embeddings[86_400 * 365]).abs().max() > 0.01  # 1000x the tolerance


def test_cache_is_a_transformers_cache_and_past_key_values_is_its_older_name():
    model = tiny_model("sasrec", seed=0).eval()
    batch = right_padded_batch(seed=0, lengths=(4, 2))
    lengths = batch["attention_mask"].sum(1)
    cache = model(**events(batch, torch.zeros_like(lengths), lengths - 1), use_cache=True).cache
    assert isinstance(cache, Cache) and isinstance(cache, SequentialRecommenderCache)
    assert len(cache) == model.config.num_hidden_layers
    with pytest.warns(FutureWarning, match="past_key_values"):
        output = model(**events(batch, lengths - 1, lengths), past_key_values=cache)
    assert output.cache is cache
    full = model(**events(batch, torch.zeros_like(lengths), lengths))
    torch.testing.assert_close(output.user_embeddings, full.user_embeddings, atol=1e-5, rtol=0)


def test_ratings_a_model_does_not_read_may_be_left_out_of_later_calls():
    model = tiny_model("hstu", seed=0).eval()
    batch = right_padded_batch(seed=3, lengths=(4, 6))
    lengths = batch["attention_mask"].sum(1)
    target = request_times(batch, lengths)
    cache = model(**events(batch, torch.zeros_like(lengths), lengths - 2), use_cache=True).cache
    new = events(batch, lengths - 2, lengths)
    del new["ratings"]
    cached = model(**new, target_timestamps=target, cache=cache)
    full = model(**events(batch, torch.zeros_like(lengths), lengths), target_timestamps=target)
    torch.testing.assert_close(cached.user_embeddings, full.user_embeddings, atol=1e-5, rtol=0)


def test_cache_rows_can_be_selected():
    model = tiny_model("hstu", seed=0).eval()
    batch = right_padded_batch(seed=1, lengths=(5, 3, 7))
    lengths = batch["attention_mask"].sum(1)
    target = request_times(batch, lengths)
    cache = model(**events(batch, torch.zeros_like(lengths), lengths - 1), use_cache=True).cache
    cache.batch_select_indices(torch.tensor([2, 0]))
    rows = torch.tensor([2, 0])
    new = events(batch, lengths - 1, lengths)
    cached = model(**{key: value[rows] for key, value in new.items()}, target_timestamps=target[rows], cache=cache)
    full = model(**events(batch, torch.zeros_like(lengths), lengths), target_timestamps=target)
    torch.testing.assert_close(cached.user_embeddings, full.user_embeddings[rows], atol=1e-5, rtol=0)


def test_an_encoded_window_takes_its_next_events_without_copying_the_keys():
    """Keys and values are allocated for twice the encoded window (at most max_tokens): the events that follow a
    prefill of 3 events are written in place, up to the full window of 8, and the results still equal a full
    recompute."""
    model = tiny_model("hstu", seed=0).eval()
    batch = right_padded_batch(seed=1, lengths=(8, 8))
    lengths = batch["attention_mask"].sum(1)
    prefix = torch.full_like(lengths, 3)
    cache = model(**events(batch, torch.zeros_like(lengths), prefix), use_cache=True).cache
    keys = cache.layers[0].keys
    assert keys.shape[2] == 6
    for stop in range(4, 7):
        stop = torch.full_like(lengths, stop)
        target = request_times(batch, stop)
        cached = model(**events(batch, stop - 1, stop), target_timestamps=target, cache=cache)
        full = model(**events(batch, torch.zeros_like(lengths), stop), target_timestamps=target)
        torch.testing.assert_close(cached.user_embeddings, full.user_embeddings, atol=1e-5, rtol=0)
        assert cache.layers[0].keys.data_ptr() == keys.data_ptr()
    model(**events(batch, stop, stop + 1), target_timestamps=target + 1000, cache=cache)
    assert cache.layers[0].keys.shape[2] == model.config.max_tokens == 8


def test_misuse_is_a_clear_error():
    model = tiny_model("hstu", seed=0)
    batch = right_padded_batch(seed=0, lengths=(4, 2))
    lengths = batch["attention_mask"].sum(1)
    history = events(batch, torch.zeros_like(lengths), lengths)
    with pytest.raises(ValueError, match="model.eval"):
        model(**history, use_cache=True)
    model.eval()
    with pytest.raises(ValueError, match="labels cannot be combined"):
        model(**history, labels=history["input_ids"], use_cache=True)
    with pytest.raises(TypeError, match="SequentialRecommenderCache"):
        model(**history, cache=object())
    with pytest.raises(ValueError, match="row 1 has no event"):
        model(**events(batch, torch.zeros_like(lengths), torch.tensor([2, 0])), use_cache=True)
    with pytest.raises(ValueError, match="input_ids is required"):
        model.recommend(target_timestamps=lengths, k=3)
    cache = model(**history, use_cache=True).cache
    with pytest.raises(ValueError, match="3 rows but cache holds 2"):
        model(**right_padded_batch(seed=0, lengths=(1, 1, 1)), cache=cache)
