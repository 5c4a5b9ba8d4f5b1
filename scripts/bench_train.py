"""Benchmark: seconds per training step of a preset on ML-1M-shaped data, and top-200 recommendation for every user.

Prints one JSON object. ML-1M shape: 6,040 users, 3,706 items, ~1M events (lengths drawn to match its mean ~165,
truncated to max_seq_len); batches of `batch_size` sequences sampled from those users. The recommendation pass
(every user, in chunks of 1,024) is timed `recommend_repeats` times after an untimed warm-up pass: the median and
minimum wall-clock seconds and the median process CPU seconds (all threads; on a shared machine the wall clock also
counts the time other jobs hold the cores). `--profile_recommend true` prints, to stderr, torch.profiler's top
operators of one more pass by self CPU time.
"""

import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

from hf_hstu.benchmarks import cpu_environment
from hf_hstu.training.arguments import PRESETS, ModelArguments
from hf_hstu.training.model_config import MODEL_CLASSES, build_model_config
from hf_hstu.training.objective import TrainingObjective


@dataclass
class BenchArguments:
    preset: str = field(default="ml-1m-hstu")
    num_users: int = field(default=6040)
    num_items: int = field(default=3706)
    num_events: int = field(default=1_000_209)
    batch_size: int = field(default=128)
    warmup_steps: int = field(default=3)
    steps: int = field(default=10)
    recommend_k: int = field(default=200)
    recommend_repeats: int = field(default=5, metadata={"help": "timed recommendation passes (median reported)."})
    recommend_chunk: int = field(default=1024, metadata={"help": "users per recommend call."})
    profile_recommend: bool = field(default=False, metadata={"help": "print the profiler's top operators."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)."})
    seed: int = field(default=0)


def ml1m_shaped_batches(args: BenchArguments, max_seq_len: int, rng: np.random.Generator):
    """Per-user histories with a long-tailed length distribution whose total is `num_events`."""
    raw = rng.lognormal(mean=4.3, sigma=1.0, size=args.num_users) + 20
    lengths = np.maximum(20, np.round(raw * args.num_events / raw.sum())).astype(np.int64)
    return np.minimum(lengths, max_seq_len)


def make_batch(lengths: np.ndarray, num_items: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    width = int(lengths.max())
    ids = rng.integers(1, num_items + 1, size=(len(lengths), width))
    mask = np.arange(width)[None, :] < lengths[:, None]
    timestamps = 956_703_932 + np.cumsum(rng.integers(1, 86_400, size=ids.shape), axis=1)
    return {
        "input_ids": torch.from_numpy(ids * mask),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        "timestamps": torch.from_numpy(timestamps * mask),
    }


def recommend_everyone(model, everyone: dict[str, torch.Tensor], k: int, chunk: int) -> None:
    """Top-k for every user, `chunk` users per call, asked one hour after each user's last event."""
    for start in range(0, everyone["input_ids"].shape[0], chunk):
        part = {key: value[start : start + chunk] for key, value in everyone.items()}
        model.recommend(**part, target_timestamps=part["timestamps"].max(1).values + 3600, k=k)


def time_recommend(model, everyone: dict[str, torch.Tensor], args: BenchArguments) -> dict[str, float]:
    """Median and minimum wall-clock seconds and median process CPU seconds of `recommend_repeats` passes."""
    wall, cpu = [], []
    for _ in range(args.recommend_repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        recommend_everyone(model, everyone, args.recommend_k, args.recommend_chunk)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "recommend_seconds": round(float(np.median(wall)), 3),
        "min_recommend_seconds": round(float(np.min(wall)), 3),
        "recommend_cpu_seconds": round(float(np.median(cpu)), 3),
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
    model = MODEL_CLASSES[config.model_type][1](config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset["learning_rate"], betas=(0.9, 0.98))
    lengths = ml1m_shaped_batches(args, config.max_seq_len, rng)
    objective = TrainingObjective(config, args.seed)  # the training loop's negatives and loss

    step_times, step_cpu_times = [], []
    model.train()
    for step in range(args.warmup_steps + args.steps):
        batch = make_batch(rng.choice(lengths, size=args.batch_size), config.num_items, rng)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss, _ = objective.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= args.warmup_steps:
            step_times.append(time.perf_counter() - start)
            step_cpu_times.append(time.process_time() - cpu_start)

    model.eval()
    everyone = make_batch(lengths, config.num_items, rng)
    recommend_everyone(model, everyone, args.recommend_k, args.recommend_chunk)  # warm-up
    recommend_timing = time_recommend(model, everyone, args)
    if args.profile_recommend:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            recommend_everyone(model, everyone, args.recommend_k, args.recommend_chunk)
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)

    step_seconds = float(np.median(step_times))
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "preset": args.preset,
                "batch_size": args.batch_size,
                "mean_length": float(lengths.mean()),
                "median_step_seconds": round(step_seconds, 4),
                "min_step_seconds": round(float(np.min(step_times)), 4),
                # CPU time of the process (all its threads): unlike the wall clock, not inflated by other jobs
                # holding the cores, so comparable on a shared machine (with --threads 1 above all).
                "median_step_cpu_seconds": round(float(np.median(step_cpu_times)), 4),
                "sequences_per_second": round(args.batch_size / step_seconds, 1),
                "recommend_users": args.num_users,
                "recommend_k": args.recommend_k,
                "recommend_repeats": args.recommend_repeats,
                **recommend_timing,
                "length_group_size": model.group_size_for(model.device),
                "embed_users_group_size": model.group_size_for(model.device, user_embeddings=True),
                **cpu_environment(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
