"""Behaviour both models share: causality, padding, gradients, learning, save/load, options, recommend, errors."""

import itertools
import os

import pytest
import torch
from recommender_testing import (
    NUM_ITEMS,
    VARIANTS,
    right_padded_batch,
    tiny_config,
    tiny_model,
    to_left_padding,
)
from transformers import AutoConfig, AutoModel

from hf_hstu import HSTUModel, SASRecModel

MODEL_TYPES = ["hstu", "sasrec"]
INPUT_KEYS = ("input_ids", "attention_mask", "timestamps", "target_timestamps")


def model_inputs(batch, keys=INPUT_KEYS):
    return {key: batch[key] for key in keys}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_causality(model_type):
    """Changing item j changes no output at positions < j."""
    model = tiny_model(model_type).eval()
    batch = right_padded_batch(lengths=(8, 8))
    changed = {key: value.clone() for key, value in batch.items()}
    changed["input_ids"][:, 5] = changed["input_ids"][:, 5] % NUM_ITEMS + 1
    before = model(**model_inputs(batch)).last_hidden_state
    after = model(**model_inputs(changed)).last_hidden_state
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_padding_invariance(model_type):
    """Each sequence alone, and in a right- or left-padded batch, gives the same outputs and the same loss."""
    model = tiny_model(model_type).eval()
    batch = right_padded_batch()
    lengths = batch["attention_mask"].sum(1).tolist()
    right = model(**model_inputs(batch), labels=batch["input_ids"])
    left_batch = to_left_padding(batch)
    left = model(**model_inputs(left_batch), labels=left_batch["input_ids"])
    torch.testing.assert_close(right.user_embeddings, left.user_embeddings, atol=1e-6, rtol=1e-5)
    width = batch["input_ids"].shape[1]
    for row, length in enumerate(lengths):
        alone = model(
            **{key: value[row : row + 1, :length] for key, value in model_inputs(batch).items() if value.dim() == 2},
            target_timestamps=batch["target_timestamps"][row : row + 1],
        )
        torch.testing.assert_close(
            right.last_hidden_state[row, :length], alone.last_hidden_state[0], atol=1e-6, rtol=1e-5
        )
        torch.testing.assert_close(
            left.last_hidden_state[row, width - length :], alone.last_hidden_state[0], atol=1e-6, rtol=1e-5
        )
        assert right.last_hidden_state[row, length:].abs().sum() == 0
        assert left.last_hidden_state[row, : width - length].abs().sum() == 0


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_loss_is_the_same_for_both_padding_sides(model_type):
    model = tiny_model(model_type).eval()
    batch = right_padded_batch()
    left_batch = to_left_padding(batch)
    torch.manual_seed(1)
    right_loss = model(**model_inputs(batch), labels=batch["input_ids"]).loss
    torch.manual_seed(1)
    left_loss = model(**model_inputs(left_batch), labels=left_batch["input_ids"]).loss
    torch.testing.assert_close(right_loss, left_loss, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_truncation_keeps_the_most_recent_events(model_type):
    model = tiny_model(model_type).eval()  # max_seq_len = 8
    long_batch = right_padded_batch(lengths=(12, 5))
    full = model(**model_inputs(long_batch))
    recent = {key: long_batch[key][:1, 4:] for key in ("input_ids", "attention_mask", "timestamps")}
    cut = model(**recent, target_timestamps=long_batch["target_timestamps"][:1])
    torch.testing.assert_close(full.user_embeddings[:1], cut.user_embeddings, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full.last_hidden_state[0, 4:], cut.last_hidden_state[0], atol=1e-6, rtol=1e-5)
    assert full.last_hidden_state.shape == (2, 12, 16)
    assert full.last_hidden_state[0, :4].abs().sum() == 0  # dropped by truncation


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("similarity", ["mol", "mol_full"])
def test_gradients_reach_every_parameter(model_type, similarity):
    model = tiny_model(model_type, similarity=similarity)
    batch = right_padded_batch()
    model(**model_inputs(batch), labels=batch["input_ids"]).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    if model_type == "hstu":
        bias = model.layers[0].attention.relative_bias
        assert bias.position_weights.grad.abs().sum() > 0 and bias.time_weights.grad.abs().sum() > 0


def _cyclic_sequences(num_users: int, length: int) -> dict[str, torch.Tensor]:
    """Users walk the catalogue in steps of +1 (wrapping around), starting anywhere: the next item is predictable."""
    starts = torch.arange(num_users) % NUM_ITEMS
    ids = (starts.unsqueeze(1) + torch.arange(length)) % NUM_ITEMS + 1
    timestamps = 1_600_000_000 + 3600 * torch.arange(length).repeat(num_users, 1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "timestamps": timestamps,
        "target_timestamps": timestamps[:, -1] + 3600,
    }


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_learns_next_item_and_ranks_it_first(model_type):
    """Trained with the research code's window (7 events: all 6 positions supervised), so the last position, which
    `recommend` reads, was trained too."""
    model = tiny_model(model_type, seed=0, max_seq_len=6, num_negatives=16, training_window="max_seq_len_plus_one")
    batch = _cyclic_sequences(num_users=60, length=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(60):
        loss = model(**model_inputs(batch), labels=batch["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    recommendations = model.recommend(**model_inputs(batch), k=1)
    true_next = batch["input_ids"][:, -1] % NUM_ITEMS + 1
    assert (recommendations.item_ids[:, 0] == true_next).float().mean() >= 0.9


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_and_load_give_identical_outputs(model_type, tmp_path):
    model = tiny_model(model_type).eval()
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt")) for name in files)
    assert f"modeling_{model_type}.py" in files and "modeling_recommender.py" in files  # code for remote loading
    config = AutoConfig.from_pretrained(tmp_path)
    assert "AutoModel" in config.auto_map
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is type(model) and not reloaded.training
    batch = right_padded_batch()
    torch.testing.assert_close(
        model(**model_inputs(batch)).last_hidden_state,
        reloaded(**model_inputs(batch)).last_hidden_state,
        rtol=0,
        atol=0,
    )


def _option_grid():
    shared = [
        {"loss": "sampled_softmax", "negative_sampling": "uniform"},
        {"loss": "sampled_softmax", "negative_sampling": "in_batch"},
        {"loss": "bce", "negative_sampling": "uniform"},
        {"loss": "bce", "negative_sampling": "in_batch"},
        {"similarity": "mol"},
        {"similarity": "mol", "loss": "bce"},
        {"similarity": "mol_full", "mol_softmax_dropout": 0.2, "mol_item_dropout": 0.1},
        {"similarity": "mol_full", "loss": "bce", "mol_gating_qi_hidden_dim": 0},
        {"l2_normalize_item_embeddings": False},
        {"training_window": "max_seq_len_plus_one"},
        {"input_preprocessor": "rated"},
        {"input_preprocessor": "combined_item_rating"},
        {"output_postprocessor": "layer_norm"},
    ]
    cases = [(model_type, option) for model_type in MODEL_TYPES for option in shared]
    for position, time in itertools.product([True, False], repeat=2):
        cases.append(("hstu", {"use_position_bias": position, "use_time_bias": time}))
        cases.append(
            (
                "hstu",
                {"use_position_bias": position, "use_time_bias": time, "input_preprocessor": "combined_item_rating"},
            )
        )
    return cases


@pytest.mark.parametrize(("model_type", "options"), _option_grid(), ids=str)
def test_every_option_trains_one_step_and_recommends(model_type, options):
    model = tiny_model(model_type, **options)
    batch = right_padded_batch()
    keys = INPUT_KEYS + ("ratings",)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    loss = model(**model_inputs(batch, keys), labels=batch["input_ids"]).loss
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, a) for b, a in zip(before, model.parameters(), strict=True))
    recommendations = model.recommend(**model_inputs(batch, keys), k=5)
    assert recommendations.item_ids.shape == (4, 5) and recommendations.scores.shape == (4, 5)
    assert (recommendations.scores[:, :-1] >= recommendations.scores[:, 1:]).all()
    for row in range(4):
        seen = set(batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist())
        assert not seen & set(recommendations.item_ids[row].tolist())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_recommend_scores_match_the_embeddings_and_respect_candidates(model_type):
    model = tiny_model(model_type).eval()
    batch = right_padded_batch()
    full = model.recommend(**model_inputs(batch), k=NUM_ITEMS - 8, filter_seen=True)
    users = model(**model_inputs(batch)).user_embeddings
    items = model.item_embeddings.weight / model.item_embeddings.weight.norm(dim=-1, keepdim=True)
    expected_scores = (users @ items.T).gather(1, full.item_ids)
    torch.testing.assert_close(full.scores, expected_scores, atol=1e-6, rtol=1e-5)
    assert (full.item_ids != 0).all()

    unfiltered = model.recommend(**model_inputs(batch), k=NUM_ITEMS, filter_seen=False)
    assert sorted(unfiltered.item_ids[0].tolist()) == list(range(1, NUM_ITEMS + 1))

    candidates = torch.tensor([3, 7, 11, 19, 23, 29])
    restricted = model.recommend(**model_inputs(batch), k=3, filter_seen=False, candidate_ids=candidates)
    assert set(restricted.item_ids.flatten().tolist()) <= set(candidates.tolist())
    per_user = candidates.repeat(4, 1)
    torch.testing.assert_close(
        model.recommend(**model_inputs(batch), k=3, filter_seen=False, candidate_ids=per_user).scores,
        restricted.scores,
    )


def test_top_k_is_the_same_in_small_chunks():
    from hf_hstu.modeling.retrieval import top_k_items

    model = tiny_model("hstu", similarity="mol").eval()
    users = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    history = torch.tensor([[1, 2, 3, 0], [4, 4, 0, 0], [30, 29, 1, 2], [0, 0, 0, 0], [5, 6, 7, 8]])
    with torch.no_grad():
        whole = top_k_items(users, model.item_table(), model.similarity, 7, exclude_ids=history)
        chunked = top_k_items(
            users, model.item_table(), model.similarity, 7, exclude_ids=history, max_scores_per_chunk=5 * 4
        )
    torch.testing.assert_close(whole[1], chunked[1])
    assert torch.equal(whole[0], chunked[0])
    for row, seen in enumerate(history.tolist()):
        assert not set(seen) & set(whole[0][row].tolist())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_training_loss_ignores_padding_and_minus_100(model_type):
    model = tiny_model(model_type).eval()
    batch = right_padded_batch()
    labels = batch["input_ids"].clone()
    torch.manual_seed(3)
    loss = model(**model_inputs(batch), labels=labels).loss
    labels[batch["attention_mask"] == 0] = -100
    torch.manual_seed(3)
    torch.testing.assert_close(model(**model_inputs(batch), labels=labels).loss, loss)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(input_ids=b["input_ids"] + 100), r"input_ids\[0, 0\] = 1\d\d is outside \[1, 30\]"),
        (lambda b: b.update(input_ids=b["input_ids"].float()), "input_ids must hold integers"),
        (lambda b: b.update(input_ids=b["input_ids"][0]), r"input_ids must have shape \(batch, seq_len\)|2 dimensions"),
        (lambda b: b.update(attention_mask=b["attention_mask"][:, :3]), r"attention_mask must have shape \(4, 8\)"),
        (lambda b: b["attention_mask"].__setitem__((0, 2), 0), "attention_mask row 0 has a gap"),
        (lambda b: b["attention_mask"].__setitem__((1, slice(None)), 0), "attention_mask row 1 has no item"),
        (lambda b: b.update(timestamps=b["timestamps"][:, :2]), r"timestamps must have shape \(4, 8\)"),
        (lambda b: b["timestamps"].__setitem__((0, 0), -5), r"timestamps\[0, 0\] = -5 is outside"),
        (lambda b: b.update(target_timestamps=b["target_timestamps"][:2]), r"target_timestamps must have shape \(4,\)"),
        (lambda b: b["input_ids"].__setitem__((0, 1), 0), r"input_ids\[0, 1\] = 0 is outside \[1, 30\]"),
    ],
)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bad_inputs_raise_named_errors(model_type, change, message):
    model = tiny_model(model_type)
    batch = right_padded_batch()
    change(batch)
    with pytest.raises(ValueError, match=message):
        model(**model_inputs(batch), labels=batch["input_ids"] if batch["input_ids"].dim() == 2 else None)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bad_recommend_arguments(model_type):
    model = tiny_model(model_type)
    batch = right_padded_batch()
    with pytest.raises(ValueError, match="k=31 is larger than the number of candidate items"):
        model.recommend(**model_inputs(batch), k=31)
    with pytest.raises(ValueError, match="left after removing seen items for batch rows \\[2\\]"):
        model.recommend(**model_inputs(batch), k=NUM_ITEMS - 5)  # row 2 has 8 distinct-or-repeated items
    with pytest.raises(ValueError, match="candidate_ids must be item ids"):
        model.recommend(**model_inputs(batch), candidate_ids=torch.tensor([0, 1, 2]), k=2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        model.recommend(**model_inputs(batch), k=0)
    with pytest.raises(ValueError, match="labels"):
        model(**model_inputs(batch), labels=batch["input_ids"] + NUM_ITEMS)


def test_rated_preprocessors_require_ratings():
    model = tiny_model("hstu", input_preprocessor="rated")
    batch = right_padded_batch()
    with pytest.raises(ValueError, match="ratings are required by input_preprocessor='rated'"):
        model(**model_inputs(batch))
    batch["ratings"][0, 0] = 9
    with pytest.raises(ValueError, match=r"ratings\[0, 0\] = 9 is outside \[0, 5\]"):
        model(**model_inputs(batch, INPUT_KEYS + ("ratings",)))


@pytest.mark.parametrize(
    ("model_type", "bad", "message"),
    [
        ("hstu", {"num_items": 0}, "num_items"),
        ("hstu", {"input_dropout": 1.0}, "input_dropout"),
        ("hstu", {"loss": "hinge"}, "loss"),
        ("hstu", {"num_attention_heads": "2"}, "num_attention_heads"),
        ("sasrec", {"num_attention_heads": 3}, "multiple of num_attention_heads"),
        ("sasrec", {"similarity": "cosine"}, "similarity"),
        ("hstu", {"bce_temperature": 0.0}, "bce_temperature must be positive"),
        ("sasrec", {"hidden_act": "tanh"}, "hidden_act"),
        ("hstu", {"training_window": "max_seq_len_plus_two"}, "training_window"),
    ],
)
def test_config_validation(model_type, bad, message):
    with pytest.raises(Exception, match=message):
        tiny_config(model_type, **bad)


def test_auto_classes_are_registered():
    assert type(AutoModel.from_config(tiny_config("hstu"))) is HSTUModel
    assert type(AutoModel.from_config(tiny_config("sasrec"))) is SASRecModel
    assert AutoConfig.for_model("hstu", num_items=3).num_items == 3


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradient_checkpointing_gives_the_same_gradients(model_type):
    batch = right_padded_batch()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(model_type)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        torch.manual_seed(0)
        model(**model_inputs(batch), labels=batch["input_ids"]).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_target_ranks_match_a_brute_force_ranking():
    from hf_hstu.modeling.retrieval import target_ranks

    model = tiny_model("hstu").eval()
    generator = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=-1)
    targets = torch.tensor([1, 5, 30, 17, 2, 9])
    history = torch.tensor([[2, 3, 0], [5, 6, 7], [1, 0, 0], [4, 4, 4], [0, 0, 0], [8, 10, 11]])
    with torch.no_grad():
        ranks = target_ranks(users, model.item_table(), model.similarity, targets, history, max_scores_per_chunk=12)
        scores = model.similarity(users, model.item_table())  # (6, 31)
    for row in range(6):
        excluded = {0, int(targets[row]), *history[row].tolist()}
        higher = [item for item in range(31) if item not in excluded and scores[row, item] > scores[row, targets[row]]]
        assert int(ranks[row]) == len(higher) + 1


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_explicit_negatives_equal_sampled_ones(model_type):
    model = tiny_model(model_type).eval()
    batch = right_padded_batch()
    num_supervised = int((batch["attention_mask"].sum(1) - 1).clamp(min=0).sum())
    torch.manual_seed(5)
    sampled = model(**model_inputs(batch), labels=batch["input_ids"]).loss
    torch.manual_seed(5)
    negatives = torch.randint(1, NUM_ITEMS + 1, (num_supervised, 8))
    explicit = model(**model_inputs(batch), labels=batch["input_ids"], negative_ids=negatives).loss
    torch.testing.assert_close(sampled, explicit)
    with pytest.raises(ValueError, match=f"one row per supervised position \\({num_supervised}\\)"):
        model(**model_inputs(batch), labels=batch["input_ids"], negative_ids=negatives[1:])
    with pytest.raises(ValueError, match=rf"negative_ids\[0, 0\] = 0 is outside \[1, {NUM_ITEMS}\]"):
        model(**model_inputs(batch), labels=batch["input_ids"], negative_ids=negatives * 0)
    too_large = negatives.clone()
    too_large[2, 3] = NUM_ITEMS + 1  # the first bad value is named, however many pass
    with pytest.raises(ValueError, match=rf"negative_ids\[2, 3\] = {NUM_ITEMS + 1} is outside"):
        model(**model_inputs(batch), labels=batch["input_ids"], negative_ids=too_large)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_embed_users_in_length_sorted_chunks_equals_forward(model_type):
    model = tiny_model(model_type).train()  # embed_users runs in eval mode and restores the mode
    batch = right_padded_batch(lengths=(5, 3, 8, 1, 7, 2))
    chunked = model.embed_users(**model_inputs(batch), chunk_size=2)
    assert model.training
    torch.testing.assert_close(chunked, model.eval()(**model_inputs(batch)).user_embeddings, atol=1e-6, rtol=1e-5)


LAST_TOKEN_VARIANTS = {
    **VARIANTS,
    "hstu-one-layer": ("hstu", {"num_hidden_layers": 1}),
    "sasrec-rated-one-layer": ("sasrec", {"input_preprocessor": "rated", "num_hidden_layers": 1}),
}


@pytest.mark.parametrize("left_padding", [False, True], ids=["right-padding", "left-padding"])
@pytest.mark.parametrize("variant", list(LAST_TOKEN_VARIANTS))
def test_embed_users_and_recommend_compute_only_the_last_token_in_the_last_layer(variant, left_padding):
    """embed_users (and so recommend) runs the last layer for each row's last token alone: the user embeddings and
    the top-k equal those of the full forward pass, for ragged rows and histories truncated to max_seq_len."""
    from hf_hstu.modeling.retrieval import top_k_items

    model_type, overrides = LAST_TOKEN_VARIANTS[variant]
    model = tiny_model(model_type, seed=1, **overrides).eval()
    batch = right_padded_batch(seed=2, lengths=(6, 3, 12, 1, 9))  # max_seq_len 8: rows 2 and 4 are truncated
    if left_padding:
        batch = to_left_padding(batch)
    inputs = model_inputs(batch, (*INPUT_KEYS, "ratings"))
    last_layer_shapes = []
    model.layers[-1].register_forward_hook(lambda module, args, output: last_layer_shapes.append(output.shape))

    full = model(**inputs).user_embeddings
    assert last_layer_shapes.pop() == (5, 8 * model.config.tokens_per_event, 16)  # every token of every row
    fast = model.embed_users(**inputs)
    assert last_layer_shapes == [(5, 1, 16)]  # one token per row
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)

    ranking = model.recommend(**inputs, k=10)
    seen = batch["input_ids"] * batch["attention_mask"]
    expected_ids, expected_scores = top_k_items(full, model.item_table(), model.similarity, 10, seen)
    torch.testing.assert_close(ranking.scores, expected_scores, atol=1e-5, rtol=0)
    assert torch.equal(ranking.item_ids, expected_ids)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_length_groups_give_the_whole_batch_result(model_type):
    batch = right_padded_batch(lengths=(5, 3, 8, 1, 7, 2, 8))
    results = []
    for group_size in (0, 2, 3):
        model = tiny_model(model_type, input_dropout=0.0).eval()
        model.length_group_size = group_size
        torch.manual_seed(1)  # the same sampled negatives
        output = model(**model_inputs(batch), labels=batch["input_ids"])
        output.loss.backward()
        results.append((output, [parameter.grad for parameter in model.parameters()]))
    (whole, whole_grads), *grouped = results
    for output, grads in grouped:
        torch.testing.assert_close(output.loss, whole.loss)
        torch.testing.assert_close(output.last_hidden_state, whole.last_hidden_state, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(output.user_embeddings, whole.user_embeddings, atol=1e-6, rtol=1e-5)
        for grad, whole_grad in zip(grads, whole_grads, strict=True):
            torch.testing.assert_close(grad, whole_grad, atol=1e-6, rtol=1e-5)


def test_length_group_size_is_a_runtime_setting(tmp_path):
    model = tiny_model("hstu")
    assert model.group_size_for(torch.device("cpu")) == 32
    assert model.group_size_for(torch.device("cpu"), user_embeddings=True) == 16
    assert model.group_size_for(torch.device("meta")) == 0  # the whole batch on accelerators
    assert model.group_size_for(torch.device("meta"), user_embeddings=True) == 0
    model.length_group_size = 5
    assert model.group_size_for(torch.device("cpu")) == model.group_size_for(torch.device("meta")) == 5
    assert model.group_size_for(torch.device("cpu"), user_embeddings=True) == 5
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="length_group_size must be None or an integer >= 0"):
            model.length_group_size = bad
    model.save_pretrained(tmp_path)  # not architecture: never saved, so checkpoints do not differ by it
    assert "length_group_size" not in (tmp_path / "config.json").read_text()
    assert HSTUModel.from_pretrained(tmp_path).length_group_size is None


@pytest.mark.parametrize("num_rows", [31, 40_000])  # item ids sorted as int16, and past int16 as int32
def test_sampled_candidate_scores_and_gradients_match_gathering(num_rows):
    from hf_hstu.modeling.similarity import DotProductSimilarity

    generator = torch.Generator().manual_seed(0)
    users = torch.randn(50, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    table = torch.randn(num_rows, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    candidates = torch.randint(max(1, num_rows - 30), num_rows, (50, 9), generator=generator)
    candidates[:, 1] = candidates[:, 0]  # repeated candidates in a row add up
    weights = torch.randn(50, 9, generator=generator, dtype=torch.float64)
    sampled = DotProductSimilarity().score_candidates(users, table, candidates)
    gathered = (users.unsqueeze(1) * table[candidates]).sum(-1)
    torch.testing.assert_close(sampled, gathered)
    sampled_grads = torch.autograd.grad((sampled * weights).sum(), (users, table))
    gathered_grads = torch.autograd.grad((gathered * weights).sum(), (users, table))
    for sampled_grad, gathered_grad in zip(sampled_grads, gathered_grads, strict=True):
        torch.testing.assert_close(sampled_grad, gathered_grad)
    assert sampled_grads[1][0].abs().sum() == 0 and sampled_grads[1][candidates[0, 0]].abs().sum() > 0
    if num_rows > 100:  # gradcheck perturbs every table entry one by one: the small table is enough for it
        return
    assert torch.autograd.gradcheck(
        lambda u, t: DotProductSimilarity().score_candidates(u, t, candidates[:6, :4]),
        (users[:6].detach().requires_grad_(), table.detach().requires_grad_()),
    )
    many = torch.randint(0, 3, (4, 7), generator=generator)  # more candidates than the 3 table rows
    torch.testing.assert_close(
        DotProductSimilarity().score_candidates(users[:4], table[:3], many), (users[:4, None] * table[many]).sum(-1)
    )


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_padding_row_starts_at_zero_and_stays_there(model_type):
    model = tiny_model(model_type)
    assert model.item_embeddings.weight[0].abs().sum() == 0 and model.item_embeddings.weight[1].abs().sum() > 0
    batch = right_padded_batch()
    model(**model_inputs(batch), labels=batch["input_ids"]).loss.backward()
    assert model.item_embeddings.weight.grad[0].abs().sum() == 0


def _reference_sampled_softmax(model, states, positives, negatives) -> torch.Tensor:
    """Cross-entropy of each positive against its negatives (none equal to it here), by the similarity."""
    table = model.item_table()
    candidates = torch.cat([positives[:, None], negatives], dim=1)
    logits = model.similarity(states, table[candidates]) / model.config.temperature
    return torch.nn.functional.cross_entropy(logits, torch.zeros_like(positives))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_research_training_window_supervises_every_encoded_position(model_type):
    """max_seq_len = 8: of a 9-event sequence the research window reads all 9 (8 supervised positions, the 9th event
    only a label and the query time of the 8th), the default window the most recent 8 (7 supervised)."""
    model = tiny_model(model_type, training_window="max_seq_len_plus_one").eval()
    batch = right_padded_batch(lengths=(9, 4))
    ids, times = batch["input_ids"], batch["timestamps"]
    generator = torch.Generator().manual_seed(0)
    negatives = torch.randint(1, NUM_ITEMS + 1, (8 + 3, 8), generator=generator)
    negatives = torch.where(
        negatives == torch.cat([ids[0, 1:], ids[1, 1:4]])[:, None], negatives % NUM_ITEMS + 1, negatives
    )
    loss = model(**model_inputs(batch), labels=ids, negative_ids=negatives).loss
    # Reference: the first 8 events of row 0 encoded with the 9th event's time as the request time.
    first = model(input_ids=ids[:1, :8], timestamps=times[:1, :8], target_timestamps=times[0, 8:9]).last_hidden_state
    second = model(input_ids=ids[1:, :4], timestamps=times[1:, :4]).last_hidden_state
    states = torch.cat([first[0], second[0, :3]])
    positives = torch.cat([ids[0, 1:9], ids[1, 1:4]])
    torch.testing.assert_close(loss, _reference_sampled_softmax(model, states, positives, negatives))
    with pytest.raises(ValueError, match=r"one row per supervised position \(11\)"):
        model(**model_inputs(batch), labels=ids, negative_ids=negatives[:10])
    model.config.training_window = "max_seq_len"
    with pytest.raises(ValueError, match=r"one row per supervised position \(10\)"):
        model(**model_inputs(batch), labels=ids, negative_ids=negatives)
    model.config.training_window = "max_seq_len_plus_one"
    without_labels = model(**model_inputs(batch))  # no labels: the most recent max_seq_len events, as before
    assert without_labels.last_hidden_state[0, 0].abs().sum() == 0


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bce_temperature_is_its_own_field(model_type):
    batch = right_padded_batch()
    losses = {}
    for bce_temperature in (None, 0.05, 1.0):
        model = tiny_model(model_type, loss="bce", bce_temperature=bce_temperature).eval()
        torch.manual_seed(7)
        losses[bce_temperature] = model(**model_inputs(batch), labels=batch["input_ids"]).loss
    torch.testing.assert_close(losses[None], losses[0.05])  # None: the shared temperature (0.05), as before
    # By hand at temperature 1: -log sigmoid(positive) - log sigmoid(-negative), summed per position, averaged.
    model = tiny_model(model_type, loss="bce", bce_temperature=1.0).eval()
    ids = batch["input_ids"]
    negatives = torch.randint(1, NUM_ITEMS + 1, (int((batch["attention_mask"].sum(1) - 1).sum()), 1))
    states = model(**model_inputs(batch)).last_hidden_state
    supervised = torch.nn.functional.pad(ids[:, 1:], (0, 1)) != 0
    positives = torch.nn.functional.pad(ids[:, 1:], (0, 1))[supervised]
    table = model.item_table()
    positive_logits = (states[supervised] * table[positives]).sum(-1)
    negative_logits = (states[supervised] * table[negatives[:, 0]]).sum(-1)
    kept = (negatives[:, 0] != positives).float()
    expected = (
        -torch.nn.functional.logsigmoid(positive_logits) - torch.nn.functional.logsigmoid(-negative_logits) * kept
    ).mean()
    loss = model(**model_inputs(batch), labels=ids, negative_ids=negatives).loss
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("preset", ["ml-1m-hstu", "ml-1m-sasrec"])
def test_paper_presets_supervise_200_positions_of_a_201_event_sequence(preset):
    """The research switches are the defaults of training runs, so of every preset."""
    from hf_hstu.training.arguments import parse_training_arguments
    from hf_hstu.training.model_config import MODEL_CLASSES, build_model_config

    model_args = parse_training_arguments(["--preset", preset])[0]
    config = build_model_config(model_args, num_items=NUM_ITEMS)
    assert (config.max_seq_len, config.max_training_events, config.bce_temperature) == (200, 201, 1.0)
    if config.model_type == "sasrec":
        assert not config.post_attention_layernorm_affine and config.hidden_act == "relu"
    torch.manual_seed(0)
    model = MODEL_CLASSES[config.model_type][1](config)
    ids = torch.randint(1, NUM_ITEMS + 1, (1, 201))
    timestamps = 1_600_000_000 + 60 * torch.arange(201).unsqueeze(0)
    negatives = torch.randint(1, NUM_ITEMS + 1, (200, config.num_negatives))
    assert torch.isfinite(model(input_ids=ids, timestamps=timestamps, labels=ids, negative_ids=negatives).loss)
    with pytest.raises(ValueError, match=r"one row per supervised position \(200\)"):
        model(input_ids=ids, timestamps=timestamps, labels=ids, negative_ids=negatives[:199])
