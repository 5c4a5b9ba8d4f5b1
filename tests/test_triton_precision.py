"""Numerics of the fused Triton HSTU attention beyond fp32: half precision, TF32, 64-bit offsets, int64 timestamps.

Without a GPU the kernels run in the Triton interpreter (small shapes). Half-precision inputs are compared with the
fp32 eager reference on the same rounded inputs, relative to the largest magnitude of each tensor: the kernels
multiply bf16/fp16 operands exactly and accumulate in fp32, and round only their fp32 results (the scores before
the second product, the outputs and gradients) to the input dtype, so the errors are a few units of the dtype's
rounding: 2^-11 = 4.9e-4 for fp16, 2^-8 = 3.9e-3 for bf16.
"""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="the hstu_triton attention backend needs triton")
tl = pytest.importorskip("triton.language")

from hf_hstu.benchmarks import jagged_reference_attention  # noqa: E402 - the model's eager attention, jagged
from hf_hstu.modeling import triton_hstu_attention  # noqa: E402

if not torch.cuda.is_available() and not triton_hstu_attention.INTERPRET:
    pytest.skip("without CUDA the Triton kernels need TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NUM_BUCKETS = 30
# max |error| / max |reference| per tensor: a few roundings of the dtype (see the module docstring). Measured in the
# interpreter: at most 6.2e-4 (fp16, dv) and 1.1e-2 (bf16, the output).
TOLERANCES = {torch.float16: 2e-3, torch.bfloat16: 3e-2}


@pytest.fixture
def interpreter_bf16_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Works around triton's interpreter multiplying bf16 dot operands as integers.

    The interpreter stores bf16 tensors as their uint16 bit patterns, and its ``create_dot`` converts only fp8
    operands before ``np.matmul``: a bf16 ``tl.dot`` multiplies the bit patterns (that was the NaN of bf16 in the
    interpreter). This fixture widens bf16 operands to the fp32 values they hold (exact) for the test. On a GPU
    the compiled kernels are used and nothing is patched.
    """
    if not triton_hstu_attention.INTERPRET:
        return
    from triton.runtime import interpreter

    create_dot = interpreter.InterpreterBuilder.create_dot

    def widen(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        values = (handle.data.astype(np.uint32) << 16).view(np.float32)  # bf16 is the top half of an fp32
        return interpreter.TensorHandle(values, tl.float32)

    def patched(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", patched)


def _inputs(lengths: list[int], num_heads: int, dqk: int, dv: int, dtype: torch.dtype, timestamp_scale: int = 1):
    """Random jagged inputs of `hstu_attention_jagged` (unix-second timestamps times `timestamp_scale`) with both
    bias tables."""
    generator = torch.Generator().manual_seed(0)
    batch_size, seq_len, num_tokens = len(lengths), max(lengths), sum(lengths)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=generator)).to(DEVICE, dtype).requires_grad_()

    mask = torch.arange(seq_len) < torch.tensor(lengths)[:, None]
    gaps = torch.exp(9 * torch.rand(batch_size, seq_len, generator=generator)).long()
    key_timestamps = (1_700_000_000 + gaps.cumsum(1)) * timestamp_scale
    query_timestamps = key_timestamps.roll(-1, 1) + torch.randint(-300, 300, (batch_size, seq_len), generator=generator)
    return {
        "query": randn(num_tokens, num_heads, dqk),
        "key": randn(num_tokens, num_heads, dqk),
        "value": randn(num_tokens, num_heads, dv),
        "seq_offsets": torch.tensor([0, *lengths], device=DEVICE).cumsum(0),
        "max_seq_len": seq_len,
        "position_weights": randn(2 * seq_len - 1, scale=0.5),
        "time_weights": randn(NUM_BUCKETS + 1, scale=0.5),
        "query_timestamps": query_timestamps[mask].to(DEVICE),
        "key_timestamps": key_timestamps[mask].to(DEVICE),
    }


def _output_and_gradients(function, inputs: dict, **kwargs) -> list[torch.Tensor]:
    """The (T, H, d_v) output and the gradients of q, k, v, w_p and w_t under a fixed random linear loss, for
    `hstu_attention_jagged` or the reference with its signature."""
    output = function(
        inputs["query"],
        inputs["key"],
        inputs["value"],
        inputs["seq_offsets"],
        inputs["max_seq_len"],
        normalization=13.0,
        position_weights=inputs["position_weights"],
        time_weights=inputs["time_weights"],
        query_timestamps=inputs["query_timestamps"],
        key_timestamps=inputs["key_timestamps"],
        num_buckets=NUM_BUCKETS,
        bucket_divisor=0.301,
        **kwargs,
    )
    grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(1)).to(output)
    names = ("query", "key", "value", "position_weights", "time_weights")
    return [output, *torch.autograd.grad(output, [inputs[name] for name in names], grad_output)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_and_backward(dtype: torch.dtype, interpreter_bf16_dot: None) -> None:
    inputs = _inputs([37, 1, 16, 25], num_heads=2, dqk=16, dv=32, dtype=dtype)
    upcast = {
        name: value.detach().float().requires_grad_()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
        else value
        for name, value in inputs.items()
    }
    actual = _output_and_gradients(triton_hstu_attention.hstu_attention_jagged, inputs)
    expected = _output_and_gradients(jagged_reference_attention, upcast)
    names = ("output", "dq", "dk", "dv", "dw_p", "dw_t")
    for name, value, reference in zip(names, actual, expected, strict=True):
        assert value.dtype == dtype, name
        assert torch.isfinite(value).all(), name
        error = (value.float() - reference).abs().max() / reference.abs().max()
        assert error < TOLERANCES[dtype], f"{name}: relative error {error:.2e} (tolerance {TOLERANCES[dtype]:.0e})"


@pytest.mark.parametrize(("allow_tf32", "global_flag", "expected"), [(None, False, "ieee"), (None, True, "tf32")])
def test_tf32_follows_torch_by_default(monkeypatch, allow_tf32, global_flag, expected) -> None:
    _check_input_precision(monkeypatch, torch.float32, allow_tf32, global_flag, expected)


@pytest.mark.parametrize(
    ("dtype", "allow_tf32", "global_flag", "expected"),
    [
        (torch.float32, True, False, "tf32"),
        (torch.float32, False, True, "ieee"),
        (torch.float16, False, False, "tf32"),  # half-precision products are exact: the setting does not apply
    ],
)
def test_tf32_explicit_choice_reaches_every_kernel(monkeypatch, dtype, allow_tf32, global_flag, expected) -> None:
    _check_input_precision(monkeypatch, dtype, allow_tf32, global_flag, expected)


def _check_input_precision(monkeypatch, dtype, allow_tf32, global_flag, expected) -> None:
    """Runs forward and backward and records the INPUT_PRECISION each of the three kernels is launched with."""
    launched = {}
    for name in ("_hstu_attn_fwd", "_hstu_attn_bwd_dkdv", "_hstu_attn_bwd_dq"):
        kernel = getattr(triton_hstu_attention, name)

        def spy(*args, kernel=kernel, name=name, **kwargs):
            launched[name] = kwargs["INPUT_PRECISION"]
            return type(kernel).run(kernel, *args, **kwargs)

        monkeypatch.setattr(kernel, "run", spy)
    tokens = torch.randn(5, 1, 16, device=DEVICE, dtype=dtype, requires_grad=True)
    # torch.backends.cuda.matmul forwards its attributes to torch._C: monkeypatch cannot restore them
    previous_flag = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = global_flag
    try:
        output = triton_hstu_attention.hstu_attention_jagged(
            tokens, tokens, tokens, torch.tensor([0, 5], device=DEVICE), 5, normalization=5.0, allow_tf32=allow_tf32
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_flag
    output.sum().backward()
    assert launched == dict.fromkeys(("_hstu_attn_fwd", "_hstu_attn_bwd_dkdv", "_hstu_attn_bwd_dq"), expected)


@triton.jit
def _head_offset_kernel(SEQ_OFFSETS, OUT, stride_t, head, stride_h):
    seq_start = tl.load(SEQ_OFFSETS + 1)
    tl.store(OUT, triton_hstu_attention._head_offset(seq_start, stride_t, head, stride_h))


def test_head_offset_is_64_bit() -> None:
    """The row offset of a sequence starting at token 2^25 - 1 of 8 heads of 128: past 2^31, computed exactly."""
    seq_start, stride_t, head, stride_h = 2**25 - 1, 8 * 128, 7, 128
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    _head_offset_kernel[(1,)](torch.tensor([0, seq_start], device=DEVICE), out, stride_t, head, stride_h)
    assert seq_start * stride_t + head * stride_h > 2**31
    assert out.item() == seq_start * stride_t + head * stride_h


def test_rejects_sequences_too_long_for_int32_offsets() -> None:
    tokens = torch.zeros(4, 64, 128, device=DEVICE)
    with pytest.raises(ValueError, match="int32 offsets"):
        triton_hstu_attention.hstu_attention_jagged(
            tokens, tokens, tokens, torch.tensor([0, 4], device=DEVICE), 2**18, normalization=4.0
        )


def test_timestamps_spanning_more_than_int32_match_the_reference() -> None:
    """Millisecond timestamps 55 years apart: the kernels keep them int64 (the int32 rebasing cannot hold them)."""
    inputs = _inputs([21, 9], num_heads=1, dqk=8, dv=8, dtype=torch.float32, timestamp_scale=1000)
    for name in ("query_timestamps", "key_timestamps"):
        inputs[name][21:] -= 1_700_000_000_000  # the second sequence near 1970: a span of ~2^40 ms
    actual = _output_and_gradients(triton_hstu_attention.hstu_attention_jagged, inputs)
    expected = _output_and_gradients(jagged_reference_attention, inputs)
    for value, reference in zip(actual, expected, strict=True):
        torch.testing.assert_close(value, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("span", "kernel_dtype"), [(2**31 - 1, torch.int32), (2**31, torch.int64)])
def test_timestamps_take_int32_exactly_when_they_fit(monkeypatch, span: int, kernel_dtype: torch.dtype) -> None:
    """Timestamps are rebased to int32 when their span is below 2^31 (every gap then fits), else stay int64; the
    buckets match the reference at the boundary either way."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 1, 16, generator=generator).to(DEVICE) for _ in range(3))
    key_timestamps = torch.tensor([10**12, 10**12 + span // 2, 10**12 + span], device=DEVICE)
    query_timestamps = torch.tensor([10**12 + span, 10**12, 10**12 + 1], device=DEVICE)
    time_weights = torch.randn(129, generator=generator).to(DEVICE)
    received = []
    apply = triton_hstu_attention.HSTUAttentionFunction.apply
    monkeypatch.setattr(
        triton_hstu_attention.HSTUAttentionFunction,
        "apply",
        lambda *args: received.append(args[7].dtype) or apply(*args),
    )
    output = triton_hstu_attention.hstu_attention_jagged(
        query,
        key,
        value,
        torch.tensor([0, 3], device=DEVICE),
        3,
        normalization=3.0,
        time_weights=time_weights,
        query_timestamps=query_timestamps,
        key_timestamps=key_timestamps,
    )
    expected = jagged_reference_attention(
        query,
        key,
        value,
        torch.tensor([0, 3], device=DEVICE),
        3,
        normalization=3.0,
        time_weights=time_weights,
        query_timestamps=query_timestamps,
        key_timestamps=key_timestamps,
    )
    assert received == [kernel_dtype]
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
