"""Benchmark HSTU attention: the fused Triton kernels vs the eager reference vs `torch.compile` of the reference.

For each (N, H, d): forward and forward+backward time, TFLOP/s and peak memory, printed as one JSON document.
Every sequence has N tokens and the batch holds about `--tokens` tokens; both relative biases are on.

"eager" is the padded PyTorch reference `hf_hstu.benchmarks.padded_reference_attention` (the operations of the
model's eager backend), "compile" is `torch.compile` of it. The timing and memory helpers live in `hf_hstu.benchmarks`.

On a GPU (the default) the inputs are bf16, each time the median of CUDA-event timings after a warm-up (L2 flushed
between calls). With `--cpu`, or when CUDA is missing, tiny fp32 shapes run in the Triton interpreter: that only
shows that the script works.

    python scripts/bench_attention.py
    python scripts/bench_attention.py --seq_lens 4096 --num_heads 4 --head_dims 128 --backends triton eager
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

BACKENDS = ("triton", "eager", "compile")  # hf_hstu.benchmarks.ATTENTION_BACKENDS (imported after TRITON_INTERPRET)


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


def main() -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (by hf_hstu below)
        torch.set_num_threads(1)  # else torch's threads and the interpreter's numpy threads spin against each other
    import triton  # after the interpreter flag

    from hf_hstu.benchmarks import attention_inputs, measure_attention

    device, dtype = ("cpu", torch.float32) if args.cpu else ("cuda", torch.bfloat16)
    results = []
    for seq_len in args.seq_lens:
        for num_heads in args.num_heads:
            for head_dim in args.head_dims:
                batch_size = max(args.tokens // seq_len, 1)
                inputs = attention_inputs(batch_size, seq_len, num_heads, head_dim, args.num_buckets, device, dtype)
                shape = {"seq_len": seq_len, "batch_size": batch_size, "num_heads": num_heads, "head_dim": head_dim}
                for backend in args.backends:
                    measured = measure_attention(backend, inputs, args.num_buckets, min_repeats=3 if args.cpu else 5)
                    results.append({**shape, "backend": backend, **measured})
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
