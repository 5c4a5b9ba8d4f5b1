"""Benchmark offline batch prediction at catalogue scale; prints JSON.

Writes an untrained HSTU checkpoint over a synthetic catalogue (1M items by default, clustered item embeddings) and a
Parquet file of 10k histories (10..200 events), then runs scripts/recommend.py (k=100, every item ranked) in a fresh
process for the exact chunked top-k and, where faiss is installed, for the approximate IVF index, and reports each
run's wall time and peak resident memory, and the faiss recall@k against the exact recommendations.
Goal on the CPU: <= 1.5 GB peak RSS.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from transformers import HfArgumentParser

from hf_hstu.serving.benchmark import recall_at_k, run_measured, synthetic_catalogue_checkpoint, synthetic_histories

SCRIPT = Path(__file__).resolve().parent / "recommend.py"


@dataclass
class BenchArguments:
    num_items: int = field(default=1_000_000)
    num_users: int = field(default=10_000)
    k: int = field(default=100)
    batch_size: int = field(default=256)
    hidden_size: int = field(default=50, metadata={"help": "The ML-1M preset's width."})
    max_seq_len: int = field(default=200)
    indexes: str = field(default="exact,faiss", metadata={"help": "Comma-separated; faiss is left out if missing."})
    nprobe: int = field(default=32)
    seed: int = field(default=0)
    work_dir: str | None = field(default=None, metadata={"help": "Where to write the files (default: a temp dir)."})


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    indexes = [name for name in args.indexes.split(",") if name != "faiss" or find_spec("faiss") is not None]
    result = {"settings": vars(args), "threads": os.environ.get("OMP_NUM_THREADS", "all cores"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        work = Path(work_dir)
        start = time.perf_counter()
        checkpoint = synthetic_catalogue_checkpoint(
            work / "model", args.num_items, args.hidden_size, args.max_seq_len, seed=args.seed
        )
        histories = synthetic_histories(work / "histories.parquet", args.num_users, args.num_items, seed=args.seed)
        result["setup_s"] = round(time.perf_counter() - start, 1)
        for index in indexes:
            command = [sys.executable, str(SCRIPT), "--model", str(checkpoint), "--input", str(histories)]
            command += ["--output", str(work / f"{index}.parquet"), "--k", str(args.k), "--request_time", "last_event"]
            command += ["--batch_size", str(args.batch_size), "--index", index, "--nprobe", str(args.nprobe)]
            measured = run_measured(command)
            summary = measured.pop("output")
            details = ("recommendations", "users", "seconds", "encode_seconds", "top_k_seconds", "index_build_seconds")
            result[index] = {**measured, **{f"summary_{name}": summary[name] for name in details}}
        if "faiss" in result and "exact" in result:
            result["faiss"]["recall_at_k"] = round(recall_at_k(work / "exact.parquet", work / "faiss.parquet"), 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
