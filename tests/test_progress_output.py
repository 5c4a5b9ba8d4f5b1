"""Progress written to a log file or a pipe is one line per phase, never carriage-return redraws; a terminal
still gets a tqdm bar."""

import io
import os
import subprocess
import sys
from pathlib import Path

from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset

from hf_hstu.progress import PhaseProgress, is_interactive

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _JupyterStream(io.StringIO):  # what a notebook's sys.stderr looks like
    isatty = io.StringIO.isatty


_JupyterStream.__module__ = "ipykernel.iostream"


def _run(stream, items=range(30)) -> str:
    progress = PhaseProgress(items, desc="epoch 1/3", stream=stream)
    for _ in progress:
        progress.set_postfix(loss="0.5000")
    progress.close()
    progress.close()  # a second close writes nothing
    return stream.getvalue()


def test_one_line_per_phase_when_not_a_terminal():
    text = _run(io.StringIO())
    assert "\r" not in text and text.count("\n") == 1
    assert text.startswith("epoch 1/3: 30 batches in ") and text.endswith(" s, loss 0.5000\n")
    assert _run(_Terminal()).count("\r") > 1  # a tqdm bar on a terminal
    assert is_interactive(_JupyterStream()) and not is_interactive(io.StringIO())  # and in a notebook
    quiet = io.StringIO()
    progress = PhaseProgress(range(3), desc="x", disable=True, stream=quiet)
    list(progress)
    progress.close()
    assert quiet.getvalue() == ""


def test_training_and_evaluation_logs_have_no_carriage_returns(tmp_path):
    dataset = save_tiny_dataset(tmp_path / "data")
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    train = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *TINY_TRAINING_ARGUMENTS]
    train += ["--dataset", str(dataset), "--output_dir", str(tmp_path / "run"), "--num_epochs", "3"]
    completed = subprocess.run(train, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-5000:]
    output = completed.stdout + completed.stderr
    assert "\r" not in output, output[-3000:]
    lines = output.splitlines()
    for epoch in (1, 2, 3):
        assert sum(line.startswith(f"epoch {epoch}/3: ") for line in lines) == 1, output
    assert sum(line.startswith("validation: ") for line in lines) == 3
    assert sum(line.startswith("test: ") for line in lines) == 1
    assert len(lines) < 40, output

    evaluate = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "evaluate.py"),
        "--model",
        str(tmp_path / "run" / "best_model"),
    ]
    evaluate += ["--dataset", str(dataset)]
    completed = subprocess.run(evaluate, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-5000:]
    assert "\r" not in completed.stdout + completed.stderr
    assert [line for line in completed.stderr.splitlines() if line.startswith("test: ")], completed.stderr
