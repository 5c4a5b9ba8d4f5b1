"""Benchmark a synthetic Books-scale run end to end on this machine; prints JSON.

Each phase runs in its own process, measured by ``run_measured`` (wall seconds, CPU seconds and the peak resident
memory of that process alone):

1. ``generate``: an Amazon ``ratings_Books.csv``-like log (``write_ratings_log``, as ``scripts/bench_preprocess.py
   --shape books``: no header, integer ids; 10M users and 2M items at 100M rows).
2. ``preprocess``: ``scripts/preprocess.py --dataset amazon-books --memory_budget_mb`` (streamed, with the dataset's
   paper filter).
3. ``prepare``: a view of the dataset for training (the train split linked, validation and test cut to blocks of
   ``--eval_users`` rows, so that scoring them over the whole catalogue does not dominate) and a histories file (raw
   ids) of a block of ``--recommend_users`` users of the test split.
4. ``train``: ``scripts/train.py --preset books-hstu --max_steps 200`` on the view, without validation or
   checkpoints; the best (last) model is saved and scored on the view's test rows, as every run ends.
5. ``recommend``: ``scripts/recommend.py`` for those users over the whole catalogue (chunked exact top-k).

    python scripts/bench_books_scale.py --work_dir /big/disk               # 100M events (many minutes)
    python scripts/bench_books_scale.py --num_rows 2000000 --max_steps 20   # about a minute
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

SCRIPTS = Path(__file__).resolve().parent
REPORTED_METRICS = ("hr@10", "ndcg@10", "mrr")


@dataclass
class BooksScaleArguments:
    num_rows: int = field(default=100_000_000, metadata={"help": "Events of the synthetic log."})
    num_users: int | None = field(default=None, metadata={"help": "Users (default: num_rows / 10, as Books)."})
    num_items: int | None = field(default=None, metadata={"help": "Items (default: num_rows / 50, as Books)."})
    memory_budget_mb: float = field(default=512, metadata={"help": "Streaming preprocessing budget."})
    preset: str = field(default="books-hstu")
    max_steps: int = field(default=200, metadata={"help": "Training steps."})
    eval_users: int = field(default=1000, metadata={"help": "Validation and test rows kept for training's scoring."})
    recommend_users: int = field(default=10_000, metadata={"help": "Users recommended for."})
    k: int = field(default=100, metadata={"help": "Recommendations per user."})
    seed: int = field(default=0)
    work_dir: str | None = field(default=None, metadata={"help": "Where to write the files (default: a temp dir)."})
    raw_path: str | None = field(
        default=None, metadata={"help": "Preprocess this Books-like log instead of generating one (no generate phase)."}
    )
    phase: str | None = field(
        default=None, metadata={"help": "Internal: run only this phase (generate or prepare) in this process."}
    )

    def __post_init__(self) -> None:
        self.num_users = self.num_users or self.num_rows // 10
        self.num_items = self.num_items or self.num_rows // 50
        if self.phase not in (None, "generate", "prepare"):
            raise ValueError(f"phase must be generate or prepare, got {self.phase!r}.")


def _generate(args: BooksScaleArguments, work: Path) -> None:
    from hf_hstu.data import write_ratings_log

    write_ratings_log(
        work / "ratings.csv", args.num_rows, args.num_users, args.num_items, layout="amazon", seed=args.seed
    )


def _block(num_rows: int, size: int, rng: np.random.Generator) -> range:
    """A seeded block of ``size`` consecutive rows: a slice of the memory-mapped split (rows picked at random would
    be taken by concatenating the whole list columns: a copy of the split in memory)."""
    start = int(rng.integers(0, max(1, num_rows - size + 1)))
    return range(start, min(num_rows, start + size))


def _prepare(args: BooksScaleArguments, work: Path) -> None:
    """The training view of ``work/data`` (``work/view``) and the histories of ``work/histories.parquet``."""
    import datasets
    import pandas as pd

    from hf_hstu.data import ItemVocabulary, load_sequences
    from hf_hstu.data.vocabulary import UserVocabulary

    data, view = work / "data", work / "view"
    splits = load_sequences(data)
    rng = np.random.default_rng(args.seed)
    view.mkdir()
    for name in ("train", "item_vocabulary.json", "user_vocabulary.json", "preprocessing.json"):
        (view / name).symlink_to(data / name)
    for split in ("validation", "test"):
        splits[split].select(_block(len(splits[split]), args.eval_users, rng)).save_to_disk(view / split)
    (view / datasets.config.DATASETDICT_JSON_FILENAME).write_text(json.dumps({"splits": list(splits)}))

    test = splits["test"]
    histories = test.select(_block(len(test), args.recommend_users, rng)).with_format("numpy")
    item_ids = list(histories["item_ids"])
    lengths = [len(row) for row in item_ids]
    users = UserVocabulary.load(data).decode(histories["user_id"])
    pd.DataFrame(
        {
            "user": np.repeat(users, lengths),
            "item": ItemVocabulary.load(data).decode(np.concatenate(item_ids)),
            "timestamp": np.concatenate(list(histories["timestamps"])),
        }
    ).to_parquet(work / "histories.parquet")


def _phase_commands(args: BooksScaleArguments, work: Path, log: Path) -> dict[str, list[str]]:
    python, own = sys.executable, [sys.executable, __file__, "--work_dir", str(work)]
    settings = [f"--{name}={value}" for name, value in asdict(args).items() if value is not None and name != "work_dir"]
    commands = {
        "generate": [*own, *settings, "--phase", "generate"],
        "preprocess": [python, str(SCRIPTS / "preprocess.py"), "--dataset", "amazon-books", "--raw_path", str(log)]
        + ["--memory_budget_mb", str(args.memory_budget_mb), "--output", str(work / "data")],
        "prepare": [*own, *settings, "--phase", "prepare"],
        "train": [python, str(SCRIPTS / "train.py"), "--preset", args.preset, "--dataset", str(work / "view")]
        + ["--output_dir", str(work / "run"), "--max_steps", str(args.max_steps), "--seed", str(args.seed)]
        + ["--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none"],
        "recommend": [python, str(SCRIPTS / "recommend.py"), "--model", str(work / "run" / "best_model")]
        + ["--input", str(work / "histories.parquet"), "--output", str(work / "recommendations.parquet")]
        + ["--k", str(args.k), "--request_time", "last_event"],
    }
    if args.raw_path is not None:
        del commands["generate"]
    return commands


def _phase_details(phase: str, work: Path, log: Path, output) -> dict:
    """What a phase made: the log's size, the dataset's counts, the run's results, the recommendations' summary."""
    if phase == "generate":
        return {"file_mb": round(log.stat().st_size / 2**20, 1)}
    if phase == "preprocess":
        metadata = json.loads((work / "data" / "preprocessing.json").read_text())
        output_mb = sum(path.stat().st_size for path in (work / "data").rglob("*")) / 2**20
        counts = {name: metadata[name] for name in ("num_users", "num_items", "num_interactions")}
        return {**counts, "output_mb": round(output_mb, 1)}
    if phase == "train":
        results = json.loads((work / "run" / "results.json").read_text())
        metrics = results["test_metrics"] or {}
        return {
            "train_seconds": round(results["train_seconds"], 2),
            "test_metrics": {name: round(metrics[name], 4) for name in REPORTED_METRICS if name in metrics},
        }
    if phase == "recommend":
        names = ("users", "recommendations", "seconds", "encode_seconds", "top_k_seconds")
        return {f"summary_{name}": output[name] for name in names}
    return {}


def main() -> None:
    (args,) = HfArgumentParser(BooksScaleArguments).parse_args_into_dataclasses()
    if args.phase is not None:  # a child process of the benchmark
        {"generate": _generate, "prepare": _prepare}[args.phase](args, Path(args.work_dir))
        return
    from hf_hstu.serving.benchmark import run_measured

    report = {"settings": asdict(args), "threads": os.environ.get("OMP_NUM_THREADS", "all cores")}
    report["cpus"], report["phases"] = os.cpu_count(), {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        work = Path(work_dir)
        log = Path(args.raw_path) if args.raw_path is not None else work / "ratings.csv"
        for phase, command in _phase_commands(args, work, log).items():
            measured = run_measured(command)
            output = measured.pop("output")
            report["phases"][phase] = {**measured, **_phase_details(phase, work, log, output)}
            print(f"{phase}: {json.dumps(report['phases'][phase])}", file=sys.stderr, flush=True)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
