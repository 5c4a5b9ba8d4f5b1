"""Benchmark: incremental inference with a cache against a full recompute.

A user history is encoded once (`model(..., use_cache=True)`); then one new event arrives and the whole catalogue is
ranked (`recommend(new event, cache=cache, k=10)`), against `recommend` of the whole history. Two cases, batch 1 and
256 by default, on the ml-1m-hstu preset (max_seq_len 200, 3,706 items, random weights: timing only):

- "within_window": 199 cached events + 1 = 200, the window holds them all: the cache recomputes two events;
- "sliding_window": 200 cached events + 1: the window (max_seq_len) slides, every position shifts, and the cache
  recomputes the new window's 200 events (the defined behaviour past max_seq_len).

Prints one JSON object: median wall-clock and process-CPU milliseconds over `repeats` timed calls (the paths taking
turns call by call, garbage collection off as in `timeit`; each cached call on a fresh copy of the prefilled cache,
made outside the timing), speedups, the largest score difference between both paths, threads. On a shared machine
the CPU time is the steadier figure (it does not count time spent waiting for a core). `ranking_only_cpu_ms` is what
both paths share and no cache saves: scoring the catalogue from given user embeddings (`item_table()` and
`top_k_items`, filtering the history), a floor under the cached time.
"""

import copy
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

from hf_hstu.benchmarks import cpu_environment
from hf_hstu.modeling.retrieval import top_k_items
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


def median_ms(
    cases: dict[str, tuple[Callable[[], object], Callable[[object], object]]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Median (wall-clock, process CPU) milliseconds of each case's `run(setup())` over `repeats` calls after two
    warm-up calls, `setup` not timed. The cases take turns, call by call, so that a load that comes and goes on a
    shared machine weighs on each alike."""
    times = {name: ([], []) for name in cases}
    gc.collect()
    gc.disable()  # as timeit does: a collection started by one case's garbage would be timed in another
    for index in range(repeats + 2):
        for name, (setup, run) in cases.items():
            state = setup()
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            run(state)
            if index >= 2:
                times[name][0].append(1000 * (time.perf_counter() - wall_start))
                times[name][1].append(1000 * (time.process_time() - cpu_start))
    gc.enable()
    return {name: (statistics.median(wall), statistics.median(cpu)) for name, (wall, cpu) in times.items()}


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

    def ranking(user_embeddings):
        with torch.no_grad():
            return top_k_items(user_embeddings, model.item_table(), model.similarity, args.k, prefilled.seen_item_ids)

    difference = (recompute(None).scores - incremental(copy.deepcopy(prefilled)).scores).abs().max()
    user_embeddings = model.embed_users(**full, target_timestamps=target)
    times = median_ms(
        {
            "full": (lambda: None, recompute),
            "cached": (lambda: copy.deepcopy(prefilled), incremental),
            "ranking": (lambda: user_embeddings, ranking),
        },
        args.repeats,
    )
    (full_wall, full_cpu), (cached_wall, cached_cpu), (_, ranking_cpu) = times.values()
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
        "ranking_only_cpu_ms": round(ranking_cpu, 3),
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
                **cpu_environment(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
