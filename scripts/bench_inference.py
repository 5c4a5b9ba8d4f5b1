"""Benchmark: incremental inference with a cache against a full recompute.

A user history is encoded once (`model(..., use_cache=True)`); then one new event arrives and the whole catalogue is
ranked (`recommend(new event, cache=cache, k=10)`), against `recommend` of the whole history. Two cases, batch 1 and
256 by default, on the ml-1m-hstu preset (max_seq_len 200, 3,706 items, random weights: timing only):

- "within_window": 199 cached events + 1 = 200, the window holds them all: the cache recomputes two events;
- "sliding_window": 200 cached events + 1: the window (max_seq_len) slides, every position shifts, and the cache
  recomputes the new window's 200 events (the defined behaviour past max_seq_len).

Prints one JSON object: median wall-clock and process-CPU milliseconds over `repeats` timed calls (each cached call
on a fresh copy of the prefilled cache, made outside the timing), speedups, the largest score difference between
both paths, threads. On a shared machine the CPU time is the steadier figure (it does not count time spent waiting
for a core).
"""

import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

from hf_hstu.training.arguments import PRESETS, ModelArguments
from hf_hstu.training.model_config import MODEL_CLASSES, build_model_config


@dataclass
class BenchArguments:
    preset: str = field(default="ml-1m-hstu")
    num_items: int = field(default=3706)
    batch_sizes: str = field(default="1,256", metadata={"help": "comma-separated batch sizes"})
    repeats: int = field(default=20, metadata={"help": "timed calls per measurement (the median is reported)"})
    k: int = field(default=10)
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's)."})
    seed: int = field(default=0)


def median_ms(setup: Callable[[], object], run: Callable[[object], object], repeats: int) -> tuple[float, float]:
    """Median (wall-clock, process CPU) milliseconds of `run(setup())` over `repeats` calls after two warm-up calls,
    `setup` not timed."""
    wall, cpu = [], []
    for index in range(repeats + 2):
        state = setup()
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        run(state)
        if index >= 2:
            wall.append(1000 * (time.perf_counter() - wall_start))
            cpu.append(1000 * (time.process_time() - cpu_start))
    return statistics.median(wall), statistics.median(cpu)


def histories(batch_size: int, length: int, num_items: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    ids = rng.integers(1, num_items + 1, size=(batch_size, length))
    timestamps = 956_703_932 + np.cumsum(rng.integers(1, 86_400, size=ids.shape), axis=1)
    return {"input_ids": torch.from_numpy(ids), "timestamps": torch.from_numpy(timestamps)}


def measure(model, batch_size: int, cached_events: int, args: BenchArguments, rng: np.random.Generator) -> dict:
    full = histories(batch_size, cached_events + 1, args.num_items, rng)
    prefix = {key: value[:, :-1] for key, value in full.items()}
    new = {key: value[:, -1:] for key, value in full.items()}
    target = full["timestamps"][:, -1] + 3600
    with torch.no_grad():
        prefilled = model(**prefix, use_cache=True).cache

    def recompute(_):
        return model.recommend(**full, target_timestamps=target, k=args.k)

    def incremental(cache):
        return model.recommend(**new, target_timestamps=target, k=args.k, cache=cache)

    difference = (recompute(None).scores - incremental(copy.deepcopy(prefilled)).scores).abs().max()
    full_wall, full_cpu = median_ms(lambda: None, recompute, args.repeats)
    cached_wall, cached_cpu = median_ms(lambda: copy.deepcopy(prefilled), incremental, args.repeats)
    return {
        "batch_size": batch_size,
        "cached_events": cached_events,
        "appended_events": 1,
        "full_recompute_ms": round(full_wall, 3),
        "cached_ms": round(cached_wall, 3),
        "speedup": round(full_wall / cached_wall, 2),
        "full_recompute_cpu_ms": round(full_cpu, 3),
        "cached_cpu_ms": round(cached_cpu, 3),
        "cpu_speedup": round(full_cpu / cached_cpu, 2),
        "max_score_difference": float(difference),
    }


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    preset = PRESETS[args.preset]
    model_args = ModelArguments(**{k: v for k, v in preset.items() if k in ModelArguments.__dataclass_fields__})
    config = build_model_config(model_args, args.num_items)
    model = MODEL_CLASSES[config.model_type][1](config).eval()
    cases = {"within_window": config.max_seq_len - 1, "sliding_window": config.max_seq_len}
    results = {
        name: [measure(model, int(size), events, args, rng) for size in args.batch_sizes.split(",")]
        for name, events in cases.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "incremental_inference",
                "preset": args.preset,
                "max_seq_len": config.max_seq_len,
                "num_items": args.num_items,
                "k": args.k,
                "repeats": args.repeats,
                **results,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
