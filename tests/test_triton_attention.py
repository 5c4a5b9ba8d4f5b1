"""The fused Triton HSTU attention against the exact eager reference: outputs and every gradient.

Without a GPU the kernels run in the Triton interpreter (slow, so shapes are small), in fp32.
"""

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    # without a GPU the kernels run in the Triton interpreter, which triton enables when it is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the hstu_triton attention backend needs triton (pip install 'hf_hstu[triton]')")

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from hf_hstu import HSTUConfig, HSTUModel  # noqa: E402
from hf_hstu.modeling import triton_hstu_attention  # noqa: E402
from hf_hstu.modeling.hstu_attention import (  # noqa: E402
    HSTUAttentionContext,
    RelativeBias,
    RelativeBiasSpec,
    hstu_attention_forward,
)
from hf_hstu.modeling.triton_hstu_attention import JaggedAttentionContext, hstu_triton_attention_forward  # noqa: E402

if not torch.cuda.is_available() and not triton_hstu_attention.INTERPRET:
    pytest.skip(
        "without CUDA the Triton kernels need the interpreter: set TRITON_INTERPRET=1 before triton is imported",
        allow_module_level=True,
    )

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NUM_BUCKETS = 30


def _random_batch(
    lengths: list[int],
    num_heads: int,
    dqk: int,
    dv: int,
    max_len: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict:
    """Right-padded random attention inputs with realistic unix-second timestamps and both bias tables."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, seq_len = len(lengths), max(lengths)
    mask = torch.arange(seq_len) < torch.tensor(lengths)[:, None]

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=generator)).to(DEVICE, dtype).requires_grad_()

    # log-uniform gaps of 1 s to ~2 h between events spread the pairs over most buckets, the longest past the last
    # (clamped); each query predicts the next event, give or take a few minutes (some before their key: negative gaps)
    gaps = torch.exp(9 * torch.rand(batch_size, seq_len, generator=generator)).long()
    key_timestamps = 1_700_000_000 + gaps.cumsum(1)
    query_timestamps = key_timestamps.roll(-1, 1) + torch.randint(-300, 300, (batch_size, seq_len), generator=generator)
    return {
        "query": randn(batch_size, num_heads, seq_len, dqk),
        "key": randn(batch_size, num_heads, seq_len, dqk),
        "value": randn(batch_size, num_heads, seq_len, dv),
        "attention_mask": mask.to(DEVICE),
        "position_weights": randn(2 * max_len - 1, scale=0.5),
        "time_weights": randn(NUM_BUCKETS + 1, scale=0.5),
        "query_timestamps": query_timestamps.to(DEVICE),
        "key_timestamps": key_timestamps.to(DEVICE),
    }


def _relative_bias(batch: dict, use_position_bias: bool, use_time_bias: bool) -> RelativeBias:
    """A layer's RelativeBias holding the batch's tables (as new leaf parameters of the batch's dtype)."""
    spec = RelativeBiasSpec(
        max_len=(batch["position_weights"].shape[0] + 1) // 2,
        num_buckets=batch["time_weights"].shape[0] - 1,
        bucket_divisor=0.301,
        use_position_bias=use_position_bias,
        use_time_bias=use_time_bias,
    )
    relative_bias = RelativeBias(spec).to(batch["query"])
    with torch.no_grad():
        for name in ("position_weights", "time_weights"):
            if getattr(relative_bias, name) is not None:
                getattr(relative_bias, name).copy_(batch[name])
    return relative_bias


def _attention(
    function,
    batch: dict,
    use_position_bias: bool = True,
    use_time_bias: bool = True,
    relative_bias: RelativeBias | None = None,
    context_class: type[HSTUAttentionContext] | None = None,
    **kwargs,
) -> torch.Tensor:
    """One backend's attention on the batch, its context prepared as `encode` does (by default the backend's own
    context class)."""
    relative_bias = relative_bias or _relative_bias(batch, use_position_bias, use_time_bias)
    if context_class is None:
        context_class = JaggedAttentionContext if function is hstu_triton_attention_forward else HSTUAttentionContext
    context = context_class.prepare(
        "test",
        batch["attention_mask"],
        batch["key_timestamps"],
        batch["query_timestamps"],
        relative_bias.spec,
    )
    output, _ = function(
        None,
        batch["query"],
        batch["key"],
        batch["value"],
        batch["attention_mask"],
        context=context,
        relative_bias=relative_bias,
        normalization=17.0,
        **kwargs,
    )
    return output


def _outputs_and_gradients(function, batch: dict, use_position_bias: bool, use_time_bias: bool):
    """The output at real tokens and the gradients of a random linear loss on it (padding rows excluded), for
    q, k, v, w_p and w_t (None for a bias part that is off)."""
    relative_bias = _relative_bias(batch, use_position_bias, use_time_bias)
    output = _attention(function, batch, relative_bias=relative_bias) * batch["attention_mask"][:, :, None, None]
    grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(1)).to(output)
    inputs = [batch[name] for name in ("query", "key", "value")]
    tables = [relative_bias.position_weights, relative_bias.time_weights]
    gradients = torch.autograd.grad(output, inputs + [t for t in tables if t is not None], grad_output)
    table_gradients = iter(gradients[3:])
    return output, [*gradients[:3], *(None if t is None else next(table_gradients) for t in tables)]


@pytest.mark.parametrize("num_heads", [1, 2])
@pytest.mark.parametrize(
    ("use_position_bias", "use_time_bias"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_matches_reference(num_heads: int, use_position_bias: bool, use_time_bias: bool) -> None:
    # lengths 1, one full block, and across 2 and 3 blocks of the interpreter's 16 tokens; d_qk != d_v; N_max > N
    batch = _random_batch([21, 1, 16, 37], num_heads=num_heads, dqk=8, dv=12, max_len=40)
    flags = (use_position_bias, use_time_bias)
    output, gradients = _outputs_and_gradients(hstu_triton_attention_forward, batch, *flags)
    expected_output, expected_gradients = _outputs_and_gradients(hstu_attention_forward, batch, *flags)
    torch.testing.assert_close(output, expected_output, atol=1e-5, rtol=1e-5)
    for name, gradient, expected in zip(("q", "k", "v", "w_p", "w_t"), gradients, expected_gradients, strict=True):
        if expected is None:
            assert gradient is None, name
        else:
            torch.testing.assert_close(
                gradient, expected, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
            )


def test_rectangular_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU autotuning candidates use unequal BLOCK_M and BLOCK_N: same results with such tiles."""
    import triton

    for kernel, block_m, block_n in (
        (triton_hstu_attention._hstu_attn_fwd, 32, 16),
        (triton_hstu_attention._hstu_attn_bwd_dkdv, 16, 32),
        (triton_hstu_attention._hstu_attn_bwd_dq, 16, 32),
    ):
        monkeypatch.setattr(kernel, "configs", [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n})])
    batch = _random_batch([45, 1, 16, 33], num_heads=2, dqk=8, dv=12, max_len=45)
    output, gradients = _outputs_and_gradients(hstu_triton_attention_forward, batch, True, True)
    expected_output, expected_gradients = _outputs_and_gradients(hstu_attention_forward, batch, True, True)
    torch.testing.assert_close(output, expected_output, atol=1e-5, rtol=1e-5)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected, atol=1e-5, rtol=1e-5)


def test_hand_computed_bias_and_gradients() -> None:
    """q = k = 0, so s is the bias alone; checks the int64 time gap, the bucket clamp and both table gradients."""
    n, t0 = 2.0, 1_700_000_000  # float32 spaces numbers near t0 by 128 s: a float32 gap would be 128 s, not 100 s
    query = torch.zeros(3, 1, 1, device=DEVICE, requires_grad=True)
    key = torch.zeros(3, 1, 1, device=DEVICE, requires_grad=True)
    value = torch.tensor([[[1.0]], [[2.0]], [[3.0]]], device=DEVICE, requires_grad=True)
    seq_offsets = torch.tensor([0, 2, 3], device=DEVICE)
    position_weights = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], device=DEVICE, requires_grad=True)  # N_max = 3
    time_weights = (0.01 * torch.arange(21.0, device=DEVICE)).requires_grad_()  # 20 buckets
    key_timestamps = torch.tensor([t0, t0 + 100, t0], device=DEVICE)
    query_timestamps = torch.tensor([t0 + 100, t0 + 100, t0 + 10**9], device=DEVICE)
    output = triton_hstu_attention.hstu_attention_jagged(
        query,
        key,
        value,
        seq_offsets,
        2,
        normalization=n,
        position_weights=position_weights,
        time_weights=time_weights,
        query_timestamps=query_timestamps,
        key_timestamps=key_timestamps,
        num_buckets=20,
    )
    output.sum().backward()

    def silu(x: float) -> float:
        return x / (1 + math.exp(-x))

    def silu_grad(x: float) -> float:
        sigmoid = 1 / (1 + math.exp(-x))
        return sigmoid * (1 + x * (1 - sigmoid))

    # bucket(100 s) = floor(ln(100) / 0.301) = 15, bucket(0 s) = 0, bucket(1e9 s) = 68 -> clamped to 20
    s00, s10, s11, s_other = 0.3 + 0.15, 0.2 + 0.15, 0.3 + 0.0, 0.3 + 0.2  # w_p[2 + j - i] + w_t[bucket]
    expected = [silu(s00) / n, (silu(s10) * 1 + silu(s11) * 2) / n, silu(s_other) * 3 / n]
    torch.testing.assert_close(output.flatten().tolist(), expected, atol=1e-6, rtol=1e-6)
    # d out / d s_ij = v_j SiLU'(s_ij) / n (the output gradient is 1)
    ds00, ds10, ds11, ds_other = (v * silu_grad(s) / n for s, v in ((s00, 1), (s10, 1), (s11, 2), (s_other, 3)))
    expected_position_grad = [0.0, ds10, ds00 + ds11 + ds_other, 0.0, 0.0]
    torch.testing.assert_close(position_weights.grad.tolist(), expected_position_grad, atol=1e-6, rtol=1e-6)
    expected_time_grad = [0.0] * 21
    expected_time_grad[0], expected_time_grad[15], expected_time_grad[20] = ds11, ds00 + ds10, ds_other
    torch.testing.assert_close(time_weights.grad.tolist(), expected_time_grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        value.grad.flatten().tolist(), [(silu(s00) + silu(s10)) / n, silu(s11) / n, silu(s_other) / n]
    )


def test_backward_is_reproducible() -> None:
    """Every gradient but w_p's is deterministic (w_p sums per-tile partials with atomics, in any order)."""
    batch = _random_batch([21, 1, 37], num_heads=2, dqk=8, dv=8, max_len=37)
    first = _outputs_and_gradients(hstu_triton_attention_forward, batch, True, True)[1]
    second = _outputs_and_gradients(hstu_triton_attention_forward, batch, True, True)[1]
    for index in (0, 1, 2, 4):
        assert torch.equal(first[index], second[index])
    torch.testing.assert_close(first[3], second[3], atol=1e-6, rtol=1e-6)


def test_registered_and_padding_positions_are_zero() -> None:
    assert ALL_ATTENTION_FUNCTIONS["hstu_triton"] is hstu_triton_attention_forward
    batch = _random_batch([5, 3], num_heads=1, dqk=4, dv=4, max_len=5)
    with torch.no_grad():
        output = _attention(hstu_triton_attention_forward, batch)
    assert torch.equal(output[1, 3:], torch.zeros_like(output[1, 3:]))


def test_rejects_what_the_kernels_cannot_do() -> None:
    batch = _random_batch([5, 3], num_heads=1, dqk=4, dv=4, max_len=5)
    forward = hstu_triton_attention_forward
    with pytest.raises(ValueError, match="no attention dropout.*eager"):
        _attention(forward, batch, dropout=0.1)
    with pytest.raises(ValueError, match="right-padded"):
        _attention(forward, {**batch, "attention_mask": batch["attention_mask"].flip(1)})
    with pytest.raises(ValueError, match="position_weights has 7 entries.*up to 4 tokens.*max_seq_len is 5"):
        _attention(forward, {**batch, "position_weights": batch["position_weights"][:7]})
    with pytest.raises(TypeError, match="needs a JaggedAttentionContext"):
        _attention(forward, batch, context_class=HSTUAttentionContext)


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_hstu_attention, "INTERPRET", False)
    tokens = torch.zeros(4, 1, 16)
    with pytest.raises(RuntimeError, match="CUDA tensors.*attn_implementation='eager'.*TRITON_INTERPRET=1"):
        triton_hstu_attention.hstu_attention_jagged(tokens, tokens, tokens, torch.tensor([0, 4]), 4, normalization=4)


def test_hstu_model_same_loss_and_gradients_as_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    config = HSTUConfig(
        num_items=20,
        max_seq_len=8,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        attention_dim=4,
        linear_dim=4,
        linear_dropout=0.0,
        input_dropout=0.0,
    )
    torch.manual_seed(0)
    model = HSTUModel(config).to(DEVICE)
    input_ids = torch.tensor([[3, 5, 7, 2, 9, 11, 4, 6], [0, 0, 0, 8, 1, 12, 19, 3], [0, 0, 0, 0, 0, 0, 0, 14]])
    timestamps = (1_700_000_000 + torch.arange(8) ** 3 * 1000).expand(3, 8) * (input_ids > 0)
    inputs = {
        "input_ids": input_ids.to(DEVICE),
        "timestamps": timestamps.to(DEVICE),
        "labels": input_ids.to(DEVICE),
        "target_timestamps": torch.full((3,), 1_700_900_000, device=DEVICE),
    }

    def loss_and_gradients(attn_implementation: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.set_attn_implementation(attn_implementation)
        model.zero_grad()
        torch.manual_seed(1)  # the same sampled negatives for both backends
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {name: parameter.grad.clone() for name, parameter in model.named_parameters()}

    expected_loss, expected_gradients = loss_and_gradients("eager")
    kernel_calls = []
    jagged_attention = triton_hstu_attention.hstu_attention_jagged
    monkeypatch.setattr(
        triton_hstu_attention,
        "hstu_attention_jagged",
        lambda *args, **kwargs: kernel_calls.append(1) or jagged_attention(*args, **kwargs),
    )
    loss, gradients = loss_and_gradients("hstu_triton")
    assert len(kernel_calls) == config.num_hidden_layers
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    assert expected_gradients.keys() == gradients.keys()
    for name, expected in expected_gradients.items():
        torch.testing.assert_close(
            gradients[name], expected, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )
