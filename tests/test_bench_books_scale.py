"""`scripts/bench_books_scale.py` at a tiny scale: every phase runs in its own process and is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_books_scale.py"


@pytest.mark.slow  # five processes, each importing torch and transformers: about a minute on 2 cores
def test_every_phase_is_measured_in_its_own_process(tmp_path):
    arguments = ["--num_rows", "20000", "--num_users", "2000", "--num_items", "400", "--max_steps", "2"]
    arguments += ["--eval_users", "20", "--recommend_users", "50", "--k", "10", "--work_dir", str(tmp_path)]
    completed = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, check=True)
    report = json.loads(completed.stdout)

    assert list(report["phases"]) == ["generate", "preprocess", "prepare", "train", "recommend"]
    for phase, measured in report["phases"].items():
        assert measured["seconds"] > 0, phase
        assert 0 < measured["cpu_seconds"], phase
        assert 50 < measured["peak_rss_mib"] < 4096, phase  # a Python process with numpy at least, and bounded
    assert report["phases"]["generate"]["file_mb"] > 0
    dataset = report["phases"]["preprocess"]
    assert 0 < dataset["num_users"] <= 2000 and 0 < dataset["num_items"] <= 400
    assert dataset["num_interactions"] <= 20_000
    train = report["phases"]["train"]
    assert 0 < train["train_seconds"] < train["seconds"]
    assert set(train["test_metrics"]) == {"hr@10", "ndcg@10", "mrr"}
    assert 0 <= train["test_metrics"]["ndcg@10"] <= train["test_metrics"]["hr@10"] <= 1
    recommend = report["phases"]["recommend"]
    assert recommend["summary_users"] == 50
    assert recommend["summary_recommendations"] == 50 * 10
    assert list(tmp_path.iterdir()) == []  # the work folder is removed
