"""Benchmark HSTU attention: the fused Triton kernels vs the eager reference vs `torch.compile` of the reference.

For each (N, H, d): forward and forward+backward time, TFLOP/s and peak memory, printed as one JSON document.
Every sequence has N tokens and the batch holds about `--tokens` tokens; both relative biases are on.

On a GPU (the default) the inputs are bf16 and the timings come from `triton.testing.do_bench`. With `--cpu`, or
when CUDA is missing, tiny fp32 shapes run in the Triton interpreter: that only shows that the script works.

    python scripts/bench_attention.py
    python scripts/bench_attention.py --seq_lens 4096 --num_heads 4 --head_dims 128 --backends triton eager
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

BACKENDS = ("triton", "eager", "compile")


@dataclass
class BenchmarkArguments:
    seq_lens: list[int] | None = field(
        default=None, metadata={"help": "Sequence lengths N (default 256 1024 4096 8192; 32 64 on CPU)."}
    )
    num_heads: list[int] | None = field(default=None, metadata={"help": "Head counts H (default 2 4; 1 2 on CPU)."})
    head_dims: list[int] | None = field(
        default=None, metadata={"help": "Head sizes d = d_qk = d_v (default 64 128; 16 on CPU)."}
    )
    tokens: int | None = field(default=None, metadata={"help": "Tokens per batch, B * N (default 65536; 128 on CPU)."})
    backends: list[str] = field(default_factory=lambda: list(BACKENDS), metadata={"help": f"Among {BACKENDS}."})
    num_buckets: int = field(default=128, metadata={"help": "Time buckets of the time bias."})
    cpu: bool = field(
        default=False, metadata={"help": "Tiny fp32 shapes in the Triton interpreter (automatic without CUDA)."}
    )

    def __post_init__(self) -> None:
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}; choose among {BACKENDS}")
        self.cpu = self.cpu or not torch.cuda.is_available()
        self.seq_lens = self.seq_lens or ([32, 64] if self.cpu else [256, 1024, 4096, 8192])
        self.num_heads = self.num_heads or ([1, 2] if self.cpu else [2, 4])
        self.head_dims = self.head_dims or ([16] if self.cpu else [64, 128])
        self.tokens = self.tokens or (128 if self.cpu else 65536)


def _inputs(batch_size: int, seq_len: int, num_heads: int, head_dim: int, num_buckets: int, device, dtype) -> dict:
    """Random padded inputs of the reference signature (all sequences full) with both bias tables."""
    generator = torch.Generator(device).manual_seed(0)

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


def _runner(backend: str, inputs: dict, num_buckets: int) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """(a function computing the attention output, its differentiable inputs) for one backend."""
    # imported here, after main() has set the interpreter flag that triton reads when first imported
    from hf_hstu.modeling.hstu_attention import (
        HSTUAttentionContext,
        RelativeBias,
        RelativeBiasSpec,
        hstu_attention_forward,
    )
    from hf_hstu.modeling.triton_hstu_attention import hstu_attention_jagged

    batch_size, num_heads, seq_len, head_dim = inputs["query"].shape
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

    spec = RelativeBiasSpec(
        max_len=seq_len, num_buckets=num_buckets, bucket_divisor=0.301, use_position_bias=True, use_time_bias=True
    )
    relative_bias = RelativeBias(spec).to(inputs["query"].device)
    with torch.no_grad():
        for name, weights in bias.items():
            getattr(relative_bias, name).copy_(weights)

    def eager(query, key, value, attention_mask, key_timestamps, query_timestamps) -> torch.Tensor:
        """The reference as a model runs it: the context (mask, time buckets) prepared, then the attention."""
        context = HSTUAttentionContext.prepare("eager", attention_mask, key_timestamps, query_timestamps, spec)
        return hstu_attention_forward(
            None,
            query,
            key,
            value,
            attention_mask,
            context=context,
            relative_bias=relative_bias,
            normalization=settings["normalization"],
        )[0]

    attention = eager
    if backend == "compile":
        torch._dynamo.reset()  # a fresh static-shape compilation per shape, clear of the recompilation limit
        attention = torch.compile(eager, dynamic=False)
    names = ("query", "key", "value", "attention_mask", "key_timestamps", "query_timestamps")

    def run() -> torch.Tensor:
        return attention(*(inputs[name] for name in names))

    return run, [inputs["query"], inputs["key"], inputs["value"], *relative_bias.parameters()]


def _milliseconds(function: Callable[[], object], cpu: bool) -> float:
    """Median time of `function` in ms: `triton.testing.do_bench` on a GPU, a few wall-clock runs on a CPU."""
    if not cpu:
        import triton.testing

        return triton.testing.do_bench(function)
    function()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        function()
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[1]


def _measure(backend: str, inputs: dict, num_buckets: int, cpu: bool) -> dict:
    """Forward (inference) and forward+backward time, TFLOP/s and peak memory beyond the inputs, of one backend."""
    run, differentiable = _runner(backend, inputs, num_buckets)
    batch_size, num_heads, seq_len, head_dim = inputs["query"].shape
    # causal half only: q k^T and a v, 2 N^2 / 2 * d multiply-adds each; backward counts 2.5x (5 such products)
    forward_flops = 2 * batch_size * num_heads * seq_len**2 * head_dim
    grad_output = torch.randn(batch_size * seq_len * num_heads * head_dim, device=inputs["query"].device)

    def forward() -> None:
        with torch.no_grad():
            run()

    def forward_backward() -> None:
        output = run()
        torch.autograd.grad(output, differentiable, grad_output[: output.numel()].view_as(output).to(output.dtype))

    result = {}
    for name, function, flops in (
        ("forward", forward, forward_flops),
        ("forward_backward", forward_backward, 3.5 * forward_flops),
    ):
        try:
            if not cpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                baseline = torch.cuda.memory_allocated()
                function()
                torch.cuda.synchronize()
                result[f"{name}_peak_memory_mib"] = (torch.cuda.max_memory_allocated() - baseline) / 2**20
            milliseconds = _milliseconds(function, cpu)
        except torch.OutOfMemoryError:
            result[f"{name}_error"] = "out of memory"
            continue
        result[f"{name}_ms"] = milliseconds
        result[f"{name}_tflops"] = flops / milliseconds / 1e9
    return result


def main() -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (by hf_hstu below)
        torch.set_num_threads(1)  # else torch's threads and the interpreter's numpy threads spin against each other
    import triton  # after the interpreter flag

    device, dtype = ("cpu", torch.float32) if args.cpu else ("cuda", torch.bfloat16)
    results = []
    for seq_len in args.seq_lens:
        for num_heads in args.num_heads:
            for head_dim in args.head_dims:
                batch_size = max(args.tokens // seq_len, 1)
                inputs = _inputs(batch_size, seq_len, num_heads, head_dim, args.num_buckets, device, dtype)
                shape = {"seq_len": seq_len, "batch_size": batch_size, "num_heads": num_heads, "head_dim": head_dim}
                for backend in args.backends:
                    results.append(
                        {**shape, "backend": backend, **_measure(backend, inputs, args.num_buckets, args.cpu)}
                    )
                del inputs
    device_name = "cpu (Triton interpreter)" if args.cpu else torch.cuda.get_device_name()
    report = {
        "device": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
