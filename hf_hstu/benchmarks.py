"""Timing helpers and the padded attention reference shared by `scripts/bench_attention.py` and the GPU acceptance
run (`hf_hstu.acceptance`, `scripts/gpu_acceptance.py`).

- :func:`time_function`: median time of a callable, with CUDA events on a GPU (warm-up, L2 flush between runs) and
  the wall clock on a CPU; :func:`peak_memory_mib`: the peak GPU memory one call allocates beyond what was live.
- :func:`padded_reference_attention` / :func:`jagged_reference_attention`: HSTU attention written with plain PyTorch
  operations on right-padded tensors, the same computation as the model's eager backend
  (``hf_hstu.modeling.hstu_attention``), built only on its stable helpers ``relative_position_bias`` and
  ``time_bucket_ids``; the jagged form takes the arguments of the Triton entry point ``hstu_attention_jagged``.
- :func:`attention_inputs`, :func:`attention_runner`, :func:`measure_attention`: one attention benchmark case
  (full sequences of N tokens, both relative biases on) for the backends "triton" (the fused kernels on jagged
  tensors), "eager" (the padded reference) and "compile" (`torch.compile` of the padded reference).

Import this module after deciding on ``TRITON_INTERPRET`` (it imports ``hf_hstu``, which imports triton).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .modeling.hstu_attention import HSTUAttentionContext, RelativeBiasSpec, eager_hstu_attention

ATTENTION_BACKENDS = ("triton", "eager", "compile")
# do_bench's habit: a 256 MiB write between timed runs evicts the previous run's data from the L2 cache
_L2_FLUSH_BYTES = 256 * 2**20


@dataclass
class Timing:
    """Milliseconds of one call: median and minimum over `repeats` timed calls."""

    median_ms: float
    min_ms: float
    repeats: int


def cpu_environment() -> dict:
    """What a CPU benchmark's figures depend on: torch's threads, the cores, the processor and torch's version."""
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def time_function(
    function: Callable[[], object],
    device: torch.device | str,
    *,
    warmup_ms: float = 25.0,
    repeat_ms: float = 100.0,
    min_repeats: int = 5,
    max_repeats: int = 100,
) -> Timing:
    """Median time of ``function()`` in ms after a warm-up, about ``repeat_ms`` of timed calls in all.

    On CUDA each call is timed with a pair of CUDA events, the L2 cache flushed before it (outside the events); on a
    CPU with ``time.perf_counter``. The first call is not timed (compilation, autotuning): run the function once
    before when its first call is slow, so that the estimate of its duration is right.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device=device) if cuda else None

    def run_timed(count: int) -> list[float]:
        if not cuda:
            times = []
            for _ in range(count):
                start = time.perf_counter()
                function()
                times.append(1000 * (time.perf_counter() - start))
            return times
        events = []
        for _ in range(count):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]

    function()  # not timed
    estimate = max(min(run_timed(2)), 1e-3)
    for _ in range(min(max(int(warmup_ms / estimate), 0), 1000)):
        function()
    repeats = min(max(int(repeat_ms / estimate), min_repeats), max_repeats)
    times = run_timed(repeats)
    return Timing(median_ms=statistics.median(times), min_ms=min(times), repeats=repeats)


def peak_memory_mib(function: Callable[[], object], device: torch.device | str) -> float | None:
    """MiB of GPU memory one call of ``function()`` allocates at its peak beyond what was allocated before it
    (None on a CPU, where the call still runs)."""
    device = torch.device(device)
    if device.type != "cuda":
        function()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    function()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def padded_reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    normalization: float,
    position_weights: torch.Tensor | None = None,
    time_weights: torch.Tensor | None = None,
    query_timestamps: torch.Tensor | None = None,
    key_timestamps: torch.Tensor | None = None,
    num_buckets: int = 128,
    bucket_divisor: float = 0.301,
) -> torch.Tensor:
    """The model's eager HSTU attention (context prepared, then `eager_hstu_attention`) on right-padded (B, H, N, d)
    tensors, with the bias tables as plain tensors; returns (B, N, H, d_v).

    ``attention_mask`` is (B, N), True at real tokens; timestamps are (B, N) int64.
    """
    if time_weights is not None and (query_timestamps is None or key_timestamps is None):
        raise ValueError("the time bias needs query_timestamps and key_timestamps")
    spec = RelativeBiasSpec(
        max_len=query.shape[2] if position_weights is None else (position_weights.shape[0] + 1) // 2,
        num_buckets=num_buckets,
        bucket_divisor=bucket_divisor,
        use_position_bias=position_weights is not None,
        use_time_bias=time_weights is not None,
    )
    context = HSTUAttentionContext.prepare("eager", attention_mask.bool(), key_timestamps, query_timestamps, spec)
    return eager_hstu_attention(
        query,
        key,
        value,
        context,
        normalization=normalization,
        position_weights=position_weights,
        time_weights=time_weights,
    )


def jagged_to_padded(
    values: torch.Tensor, seq_offsets: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, ...) rows of back-to-back sequences -> ((B, seq_len, ...) right-padded with zeros, (B, seq_len) mask)."""
    lengths = seq_offsets.diff()
    mask = torch.arange(seq_len, device=values.device) < lengths[:, None]
    padded = values.new_zeros(lengths.shape[0] * seq_len, *values.shape[1:])
    padded = padded.index_copy(0, mask.flatten().nonzero().squeeze(1), values)
    return padded.view(lengths.shape[0], seq_len, *values.shape[1:]), mask


def jagged_reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    normalization: float,
    position_weights: torch.Tensor | None = None,
    time_weights: torch.Tensor | None = None,
    query_timestamps: torch.Tensor | None = None,
    key_timestamps: torch.Tensor | None = None,
    num_buckets: int = 128,
    bucket_divisor: float = 0.301,
) -> torch.Tensor:
    """:func:`padded_reference_attention` with the arguments and (T, H, d_v) result of ``hstu_attention_jagged``
    (differentiable with respect to q, k, v and both tables)."""
    seq_offsets = seq_offsets.to(torch.int64)

    def padded(rows: torch.Tensor) -> torch.Tensor:  # (T, H, d) -> (B, H, N, d)
        return jagged_to_padded(rows, seq_offsets, max_seq_len)[0].transpose(1, 2)

    _, mask = jagged_to_padded(query[:, :1, :1], seq_offsets, max_seq_len)
    timestamps = {}
    if time_weights is not None:
        if query_timestamps is None or key_timestamps is None:
            raise ValueError("the time bias needs query_timestamps and key_timestamps")
        timestamps = {
            "query_timestamps": jagged_to_padded(query_timestamps.to(torch.int64), seq_offsets, max_seq_len)[0],
            "key_timestamps": jagged_to_padded(key_timestamps.to(torch.int64), seq_offsets, max_seq_len)[0],
        }
    output = padded_reference_attention(
        padded(query),
        padded(key),
        padded(value),
        mask,
        normalization=normalization,
        position_weights=position_weights,
        time_weights=time_weights,
        num_buckets=num_buckets,
        bucket_divisor=bucket_divisor,
        **timestamps,
    )  # (B, N, H, d_v)
    return output.flatten(0, 1)[mask.flatten()]


def attention_forward_flops(batch_size: int, seq_len: int, num_heads: int, head_dim: int) -> float:
    """Forward FLOPs over the causal half: q k^T and a v, N^2 / 2 * d multiply-adds each, per sequence and head.
    The backward does 2.5 times as many (five such products), so forward+backward is 3.5 times this."""
    return 2.0 * batch_size * num_heads * seq_len**2 * head_dim


def attention_inputs(
    batch_size: int,
    seq_len: int,
    num_heads: int,
    head_dim: int,
    num_buckets: int,
    device: torch.device | str,
    dtype: torch.dtype,
    seed: int = 0,
) -> dict:
    """Random padded inputs of :func:`padded_reference_attention` (every sequence full) with both bias tables."""
    generator = torch.Generator(device).manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=generator, device=device)).to(dtype).requires_grad_()

    gaps = torch.randint(0, 3600, (batch_size, seq_len), generator=generator, device=device)
    key_timestamps = 1_700_000_000 + gaps.cumsum(1)
    return {
        "query": randn(batch_size, num_heads, seq_len, head_dim),
        "key": randn(batch_size, num_heads, seq_len, head_dim),
        "value": randn(batch_size, num_heads, seq_len, head_dim),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.bool, device=device),
        "position_weights": randn(2 * seq_len - 1, scale=0.1),
        "time_weights": randn(num_buckets + 1, scale=0.1),
        "query_timestamps": key_timestamps.roll(-1, 1),
        "key_timestamps": key_timestamps,
    }


def attention_runner(
    backend: str, inputs: dict, num_buckets: int, compile_backend: str = "inductor"
) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """(a function computing the attention output, its differentiable inputs) for one backend of
    :data:`ATTENTION_BACKENDS` on :func:`attention_inputs`."""
    from .modeling.triton_hstu_attention import hstu_attention_jagged

    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose among {ATTENTION_BACKENDS}")
    batch_size, num_heads, seq_len, _ = inputs["query"].shape
    settings = {"normalization": float(seq_len), "num_buckets": num_buckets, "bucket_divisor": 0.301}
    bias = {name: inputs[name] for name in ("position_weights", "time_weights")}
    if backend == "triton":  # the kernels on jagged tensors, without the padded adapter's gathers

        def to_jagged(padded: torch.Tensor) -> torch.Tensor:
            return padded.detach().transpose(1, 2).reshape(-1, num_heads, padded.shape[-1]).requires_grad_()

        query, key, value = (to_jagged(inputs[name]) for name in ("query", "key", "value"))
        seq_offsets = torch.arange(0, batch_size * seq_len + 1, seq_len, device=query.device)
        timestamps = {name: inputs[name].flatten() for name in ("query_timestamps", "key_timestamps")}

        def run() -> torch.Tensor:
            return hstu_attention_jagged(query, key, value, seq_offsets, seq_len, **bias, **timestamps, **settings)

        return run, [query, key, value, *bias.values()]

    attention = padded_reference_attention
    if backend == "compile":
        torch._dynamo.reset()  # a fresh static-shape compilation per shape, clear of the recompilation limit
        attention = torch.compile(padded_reference_attention, dynamic=False, backend=compile_backend)
    tensors = [inputs[name] for name in ("query", "key", "value", "attention_mask")]
    timestamps = {name: inputs[name] for name in ("query_timestamps", "key_timestamps")}

    def run() -> torch.Tensor:
        return attention(*tensors, **bias, **timestamps, **settings)

    return run, [inputs["query"], inputs["key"], inputs["value"], *bias.values()]


def measure_attention(
    backend: str,
    inputs: dict,
    num_buckets: int,
    *,
    compile_backend: str = "inductor",
    repeat_ms: float = 100.0,
    min_repeats: int = 5,
) -> dict:
    """Forward (inference) and forward+backward of one backend: ms (median), TFLOP/s over the causal half, peak
    memory beyond the inputs (MiB, GPU only), and the seconds of the first call (compilation, autotuning)."""
    run, differentiable = attention_runner(backend, inputs, num_buckets, compile_backend)
    device = inputs["query"].device
    batch_size, num_heads, seq_len, head_dim = inputs["query"].shape
    forward_flops = attention_forward_flops(batch_size, seq_len, num_heads, head_dim)
    grad_output: list[torch.Tensor] = []  # made at the first call, outside the timed ones

    def forward() -> None:
        with torch.no_grad():
            run()

    def forward_backward() -> None:
        output = run()
        if not grad_output:
            grad_output.append(torch.randn(output.shape, device=device).to(output.dtype))
        torch.autograd.grad(output, differentiable, grad_output[0])

    result = {}
    for name, function, flops in (
        ("forward", forward, forward_flops),
        ("forward_backward", forward_backward, 3.5 * forward_flops),
    ):
        try:
            start = time.perf_counter()
            function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result[f"{name}_first_call_s"] = time.perf_counter() - start
            memory = peak_memory_mib(function, device)
            if memory is not None:  # GPU only
                result[f"{name}_peak_memory_mib"] = memory
            timing = time_function(function, device, repeat_ms=repeat_ms, min_repeats=min_repeats)
        except torch.cuda.OutOfMemoryError:
            result[f"{name}_error"] = "out of memory"
            continue
        result[f"{name}_ms"] = timing.median_ms
        result[f"{name}_tflops"] = flops / timing.median_ms / 1e9
    return result
