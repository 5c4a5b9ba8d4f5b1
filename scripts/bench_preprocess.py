"""Benchmark the preprocessing of a synthetic ratings log; prints JSON.

Writes the log in chunks (``hf_hstu.data.synthetic.write_ratings_log``), then preprocesses it in a fresh process
and reports the seconds of each phase and the peak resident memory of that process (``RUSAGE_CHILDREN``: the
largest of the child processes). Shapes:

- ``movielens`` (default): MovieLens-20M's ``ratings.csv`` (20,000,263 rows, 138,493 users, 26,744 items), read as
  ``ml-20m``. Targets on 2 CPU cores: streaming <= 1 GB at 20M rows.
- ``books``: an Amazon ``ratings_Books.csv``-like log (no header, integer ids; 10M users, 2M items), read as
  ``amazon-books`` (with its default paper filter, 5). Target: 100M rows streamed in <= 2 GB.

``--memory_budget_mb`` streams (:mod:`hf_hstu.data.streaming`); ``--in_memory true`` runs the in-memory path instead.

    python scripts/bench_preprocess.py --num_rows 20000000
    python scripts/bench_preprocess.py --shape books --num_rows 100000000 --work_dir /big/disk
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

from hf_hstu.data import (
    InteractionChunks,
    PreprocessingConfig,
    StreamingBudget,
    build_sequences_streaming,
    default_filters,
    preprocess,
    write_ratings_log,
)

SHAPES = {
    "movielens": {"dataset": "ml-20m", "layout": "movielens", "num_users": 138_493, "num_items": 26_744},
    "books": {"dataset": "amazon-books", "layout": "amazon", "num_users": 10_000_000, "num_items": 2_000_000},
}


@dataclass
class BenchArguments:
    num_rows: int = field(default=20_000_263, metadata={"help": "Rows of the synthetic log."})
    shape: Literal["movielens", "books"] = field(default="movielens", metadata={"help": "movielens or books."})
    num_users: int | None = field(default=None, metadata={"help": "Users (default: the shape's)."})
    num_items: int | None = field(default=None, metadata={"help": "Distinct items (default: the shape's)."})
    memory_budget_mb: float = field(default=512, metadata={"help": "Streaming memory budget."})
    in_memory: bool = field(default=False, metadata={"help": "Run the in-memory path instead of streaming."})
    seed: int = field(default=0)
    work_dir: str | None = field(default=None, metadata={"help": "Where to write the files (default: a temp dir)."})
    raw_path: str | None = field(
        default=None, metadata={"help": "Preprocess this log (in the shape's format) instead of writing one."}
    )


_COUNTS = ("num_interactions", "num_users", "num_items", "num_rows")


def _run_preprocess(args: BenchArguments, log_path: str, output_dir: str, config: PreprocessingConfig, results) -> None:
    dataset = SHAPES[args.shape]["dataset"]
    config = replace(config, **{k: v for k, v in default_filters(dataset).items() if getattr(config, k) is None})
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if args.in_memory:
        data = preprocess(dataset, output_dir, config=config, raw_path=log_path)
    else:
        chunk_bytes = StreamingBudget.from_megabytes(args.memory_budget_mb).chunk_bytes
        chunks = InteractionChunks(dataset, raw_path=log_path, chunk_bytes=chunk_bytes)
        data = build_sequences_streaming(
            chunks, output_dir, config, dataset, memory_budget_mb=args.memory_budget_mb, timings=timings
        )
    total = time.perf_counter() - start
    results.put({"preprocess_s": round(total, 2), "phases": timings, **{k: data.metadata[k] for k in _COUNTS}})


def main() -> None:
    args, config = HfArgumentParser((BenchArguments, PreprocessingConfig)).parse_args_into_dataclasses()
    shape = SHAPES[args.shape]
    num_users = args.num_users or shape["num_users"]
    num_items = args.num_items or shape["num_items"]
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        log_path = Path(args.raw_path or Path(work_dir) / "ratings.csv")
        start = time.perf_counter()
        if args.raw_path is None:
            write_ratings_log(log_path, args.num_rows, num_users, num_items, layout=shape["layout"], seed=args.seed)
        generate_s = time.perf_counter() - start
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        start = time.perf_counter()
        worker = context.Process(
            target=_run_preprocess, args=(args, str(log_path), str(Path(work_dir) / "out"), config, results)
        )
        worker.start()
        result = results.get()
        worker.join()
        wall_s = time.perf_counter() - start
        report = {
            "rows": args.num_rows,
            "shape": args.shape,
            "users": num_users,
            "items": num_items,
            "mode": "in_memory" if args.in_memory else f"streaming, memory_budget_mb={args.memory_budget_mb:g}",
            "file_mb": round(log_path.stat().st_size / 2**20, 1),
            "generate_s": round(generate_s, 2),
            "generate_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            **result,
            "process_wall_s": round(wall_s, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
            "output_mb": round(sum(f.stat().st_size for f in (Path(work_dir) / "out").rglob("*")) / 2**20, 1),
            "split": config.split,
        }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
