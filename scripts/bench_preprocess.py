"""Benchmark the preprocessing of a synthetic MovieLens-20M-shaped ratings file; prints JSON.

Generates ``ratings.csv`` (20,000,263 rows, 138,493 users, 26,744 items by default), then runs
``hf_hstu.data.preprocess("ml-20m", ...)`` on it in a fresh process and reports its wall time (end to end:
parse, sort, group, split, save_to_disk) and peak resident memory. Target on 2 CPU cores: <= 60 s, <= 4 GB.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
from transformers import HfArgumentParser

from hf_hstu.data import PreprocessingConfig, preprocess
from hf_hstu.data.synthetic import make_movielens_like_ratings


@dataclass
class BenchArguments:
    num_rows: int = field(default=20_000_263, metadata={"help": "Rows of the synthetic ratings.csv."})
    num_users: int = field(default=138_493, metadata={"help": "Users (each with >= 20 ratings)."})
    num_items: int = field(default=26_744, metadata={"help": "Distinct movie ids."})
    seed: int = field(default=0)
    work_dir: str | None = field(default=None, metadata={"help": "Where to write the files (default: a temp dir)."})


def _run_preprocess(ratings_path: str, output_dir: str, config: PreprocessingConfig, results) -> None:
    start = time.perf_counter()
    data = preprocess("ml-20m", output_dir, config=config, raw_path=ratings_path)
    results.put({"preprocess_s": time.perf_counter() - start, **{k: data.metadata[k] for k in _COUNTS}})


_COUNTS = ("num_interactions", "num_users", "num_items", "num_rows")


def main() -> None:
    bench_args, config = HfArgumentParser((BenchArguments, PreprocessingConfig)).parse_args_into_dataclasses()
    with tempfile.TemporaryDirectory(dir=bench_args.work_dir) as work_dir:
        ratings_path = Path(work_dir) / "ratings.csv"
        start = time.perf_counter()
        ratings = make_movielens_like_ratings(
            bench_args.num_rows, bench_args.num_users, bench_args.num_items, bench_args.seed
        )
        pa_csv.write_csv(pa.Table.from_pandas(ratings, preserve_index=False), ratings_path)
        del ratings
        generate_s = time.perf_counter() - start
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        start = time.perf_counter()
        worker = context.Process(
            target=_run_preprocess, args=(str(ratings_path), str(Path(work_dir) / "out"), config, results)
        )
        worker.start()
        result = results.get()
        worker.join()
        wall_s = time.perf_counter() - start
        peak_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        report = {
            "rows": bench_args.num_rows,
            "file_mb": round(ratings_path.stat().st_size / 2**20, 1),
            "generate_s": round(generate_s, 2),
            "preprocess_s": round(result.pop("preprocess_s"), 2),
            "process_wall_s": round(wall_s, 2),
            "peak_rss_gb": round(peak_rss_kb / 2**20, 3),
            "split": config.split,
            **result,
        }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
