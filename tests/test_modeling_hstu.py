"""HSTU-specific tests: the layer math by hand, the relative bias, and the time-context requirement."""

import math

import numpy as np
import pytest
import torch
from recommender_testing import right_padded_batch, tiny_model

from hf_hstu import HSTUConfig, HSTUModel
from hf_hstu.modeling.hstu_attention import (
    HSTUAttentionContext,
    RelativeBiasSpec,
    eager_hstu_attention,
    relative_position_bias,
    time_bucket_ids,
)


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def _layer_norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return (x - x.mean()) / math.sqrt(x.var() + eps)


def _bucket(gap: float) -> int:
    return min(max(int(math.floor(math.log(max(abs(gap), 1.0)) / 0.301)), 0), 128)


def test_one_layer_by_hand():
    """D=4, N=3, one head: embeddings, one HSTU layer with both biases and the L2 output, computed with loops."""
    torch.manual_seed(0)
    config = HSTUConfig(
        num_items=5,
        max_seq_len=3,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        attention_dim=2,
        linear_dim=2,
        input_dropout=0.0,
        linear_dropout=0.0,
    )
    model = HSTUModel(config).double()
    layer = model.layers[0].attention
    ids = [2, 5, 1]
    times = [1_000, 1_060, 90_000]
    request_time = 200_000

    item_table = model.item_embeddings.weight.detach().numpy()
    position_table = model.input_preprocessor.position_embeddings.weight.detach().numpy()
    w = layer.uvqk_proj.weight.detach().numpy().T  # (D, 2 dv + 2 dqk)
    w_p = layer.relative_bias.position_weights.detach().numpy()
    w_t = layer.relative_bias.time_weights.detach().numpy()
    w_o = layer.o_proj.weight.detach().numpy()
    b_o = layer.o_proj.bias.detach().numpy()
    n = 3 + 11

    x = [item_table[ids[i]] * 2.0 + position_table[i] for i in range(3)]  # sqrt(D) = 2
    u, v, q, k = [], [], [], []
    for i in range(3):
        projected = [_silu(value) for value in _layer_norm(x[i]) @ w]
        u.append(np.array(projected[0:2]))
        v.append(np.array(projected[2:4]))
        q.append(np.array(projected[4:6]))
        k.append(np.array(projected[6:8]))
    query_times = [times[1], times[2], request_time]
    expected = []
    for i in range(3):
        attended = np.zeros(2)
        for j in range(i + 1):
            score = q[i] @ k[j] + w_p[3 - 1 + j - i] + w_t[_bucket(query_times[i] - times[j])]
            attended += _silu(score) / n * v[j]
        y = x[i] + w_o @ (u[i] * _layer_norm(attended)) + b_o
        expected.append(y / np.linalg.norm(y))

    outputs = model(
        input_ids=torch.tensor([ids]), timestamps=torch.tensor([times]), target_timestamps=torch.tensor([request_time])
    )
    np.testing.assert_allclose(outputs.last_hidden_state[0].detach().numpy(), np.stack(expected), atol=1e-6)
    np.testing.assert_allclose(outputs.user_embeddings[0].detach().numpy(), expected[-1], atol=1e-6)


def test_time_buckets_and_position_bias_by_hand():
    gaps = torch.tensor([[0, 1, 2, 3, 10, 1_000, 86_400, -86_400, 10**18]])  # query times against a key at 0
    buckets = time_bucket_ids(gaps, torch.zeros(1, 1, dtype=torch.long), 128, 0.301)
    expected = [_bucket(float(g)) for g in gaps.flatten().tolist()]
    assert buckets.flatten().tolist() == expected
    assert expected[:4] == [0, 0, 2, 3] and expected[-1] == 128  # ln(2)/0.301 = 2.3; clamped at num_buckets

    weights = torch.arange(7.0)  # N_max = 4
    bias = relative_position_bias(weights, 3)
    assert bias.tolist() == [[3.0, 4.0, 5.0], [2.0, 3.0, 4.0], [1.0, 2.0, 3.0]]  # w[N_max - 1 + j - i]


@pytest.mark.parametrize("use_position_bias", [True, False])
@pytest.mark.parametrize("use_time_bias", [True, False])
def test_eager_attention_values_and_gradients_match_a_plain_computation(use_position_bias, use_time_bias):
    """The eager reference (int32 time buckets, in-place bias) against the formula written out pair by pair:
    outputs and the gradients of q, k, v and both bias tables, on a right-padded batch of two heads."""
    torch.manual_seed(0)
    batch_size, num_heads, seq_len, max_len, dim = 2, 2, 5, 6, 3
    spec = RelativeBiasSpec(max_len, 128, 0.301, use_position_bias, use_time_bias)
    lengths = [5, 3]
    mask = torch.arange(seq_len) < torch.tensor(lengths)[:, None]
    key_times = torch.tensor([[100, 160, 4_000, 90_000, 2_000_000], [50, 51, 7_000, 0, 0]])
    query_times = torch.tensor([[160, 4_000, 90_000, 2_000_000, 2_500_000], [51, 7_000, 10**6, 0, 0]])
    query, key, value = (torch.randn(batch_size, num_heads, seq_len, dim, dtype=torch.float64) for _ in range(3))
    position_weights = torch.randn(2 * max_len - 1, dtype=torch.float64) if use_position_bias else None
    time_weights = torch.randn(129, dtype=torch.float64) if use_time_bias else None
    inputs = [t.requires_grad_() for t in (query, key, value, position_weights, time_weights) if t is not None]
    grad_output = torch.randn(batch_size, seq_len, num_heads, dim, dtype=torch.float64)

    context = HSTUAttentionContext.prepare("eager", mask, key_times, query_times, spec)
    output = eager_hstu_attention(
        query,
        key,
        value,
        context,
        normalization=7.0,
        position_weights=position_weights,
        time_weights=time_weights,
    )
    gradients = torch.autograd.grad(output, inputs, grad_output)

    plain = torch.zeros(batch_size, seq_len, num_heads, dim, dtype=torch.float64)
    for b in range(batch_size):
        for h in range(num_heads):
            for i in range(seq_len):
                for j in range(min(i + 1, lengths[b])):  # causal, and only real keys
                    score = query[b, h, i] @ key[b, h, j]
                    if use_position_bias:
                        score = score + position_weights[max_len - 1 + j - i]
                    if use_time_bias:
                        score = score + time_weights[_bucket(int(query_times[b, i] - key_times[b, j]))]
                    plain[b, i, h] = plain[b, i, h] + torch.nn.functional.silu(score) / 7.0 * value[b, h, j]
    expected_gradients = torch.autograd.grad(plain, inputs, grad_output)

    torch.testing.assert_close(output, plain, rtol=1e-12, atol=1e-12)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)
    if use_time_bias:
        assert context.time_buckets.dtype == torch.int32
        assert (gradients[-1] != 0).sum() > 3  # several buckets are used, so their scatter is exercised


@pytest.mark.parametrize("use_position_bias", [True, False])
@pytest.mark.parametrize("use_time_bias", [True, False])
def test_bias_tables_follow_config(use_position_bias, use_time_bias):
    model = tiny_model(use_position_bias=use_position_bias, use_time_bias=use_time_bias)
    bias = model.layers[0].attention.relative_bias
    assert (bias.position_weights is not None) == use_position_bias
    assert (bias.time_weights is not None) == use_time_bias
    assert model.requires_target_timestamps == use_time_bias
    if use_position_bias:
        assert bias.position_weights.shape == (2 * 8 - 1,)
    if use_time_bias:
        assert bias.time_weights.shape == (129,)


def test_time_bias_sees_the_request_time():
    """With the time bias on, the request time changes the user embedding; with it off, it does not."""
    batch = right_padded_batch()
    for use_time_bias in (True, False):
        model = tiny_model(use_time_bias=use_time_bias).eval()
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "timestamps")}
        soon = model(**inputs, target_timestamps=batch["target_timestamps"]).user_embeddings
        later = model(**inputs, target_timestamps=batch["target_timestamps"] + 10**7).user_embeddings
        assert torch.allclose(soon, later) != use_time_bias


def test_recommend_requires_request_time_with_time_bias():
    model = tiny_model()
    batch = right_padded_batch()
    with pytest.raises(ValueError, match="target_timestamps is required"):
        model.recommend(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], timestamps=batch["timestamps"]
        )
    with pytest.raises(ValueError, match="timestamps are required"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_concat_ua_changes_the_output_projection():
    model = tiny_model(concat_ua=True)
    assert model.layers[0].attention.o_proj.in_features == 3 * 2 * 6
    batch = right_padded_batch()
    loss = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "timestamps")}, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss)


def test_attention_dropout_is_off_by_default_and_an_option():
    """The research code never applies attention dropout: off by default (and in the paper presets); on request it
    drops attention weights in training only."""
    from hf_hstu.training.arguments import PRESETS

    assert HSTUConfig(num_items=3).attention_dropout == 0.0
    assert "attention_dropout" not in PRESETS["ml-1m-hstu"]
    batch = right_padded_batch()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "timestamps", "target_timestamps")}
    outputs = {}
    for rate in (0.0, 0.5):
        model = tiny_model("hstu", attention_dropout=rate).train()  # input and linear dropout are 0 here
        for seed in (1, 2):
            torch.manual_seed(seed)
            outputs[rate, seed] = model(**inputs).user_embeddings
        outputs[rate, "eval"] = model.eval()(**inputs).user_embeddings
    torch.testing.assert_close(outputs[0.0, 1], outputs[0.0, 2])
    torch.testing.assert_close(outputs[0.0, 1], outputs[0.0, "eval"])
    assert not torch.allclose(outputs[0.5, 1], outputs[0.5, 2])
    torch.testing.assert_close(outputs[0.5, "eval"], outputs[0.0, "eval"])
