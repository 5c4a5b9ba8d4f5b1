"""The training loop's switches as a user sets them: checkpoints and validation every N steps, exact resumption in
the middle of an epoch (also of a process killed with SIGKILL), the learning-rate schedule, gradient accumulation,
logging of loss, learning rate and throughput, early stopping's min_epochs, the divergence guard, torch.compile."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset, tiny_model
from safetensors.torch import load_file

from hf_hstu.training import loop
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import DivergenceGuard, EarlyStopping, train
from hf_hstu.training.objective import TrainingObjective

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_TRAINING_ARGUMENTS, "--top_k", "5,10"]
# 48 training sequences in batches of 8, two batches per optimiser step: 3 steps per epoch, dropout on (0.2), with a
# warmed-up cosine schedule and clipping, so that a resume must restore all of them to end bit-identical.
RESUMABLE = [
    *("--batch_size", "8", "--gradient_accumulation_steps", "2", "--num_epochs", "2"),
    *("--lr_scheduler_type", "cosine", "--warmup_steps", "2", "--max_grad_norm", "1.0"),
    *("--early_stopping_patience", "10", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "10"),
]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return save_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def run(tmp_path, tiny_dataset, *extra: str, name: str = "run"):
    argv = [*TINY, "--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / name), *extra]
    return train(*parse_training_arguments(argv))


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


class Killed(Exception):
    """Stands for the end of a process right after a checkpoint was saved."""


def test_run_killed_at_any_step_resumes_to_the_same_weights(tmp_path, tiny_dataset, monkeypatch):
    straight = run(tmp_path, tiny_dataset, *RESUMABLE, name="straight")
    checkpoints = tmp_path / "straight" / "checkpoints"
    names = [path.name for path in loop._checkpoints(checkpoints, complete_only=True)]
    assert names == [f"checkpoint-{step}" for step in range(1, 7)]
    state = json.loads((checkpoints / "checkpoint-4" / "training_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"], state["global_step"]) == (1, 2, 4)  # mid-epoch

    save = loop._save_checkpoint
    for kill_at in (1, 3, 5):  # in the first epoch, at its end, in the middle of the second
        name = f"killed_at_{kill_at}"

        def save_then_die(run_state, kill_at=kill_at):
            save(run_state)
            if run_state.state.global_step == kill_at:
                raise Killed

        monkeypatch.setattr(loop, "_save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            run(tmp_path, tiny_dataset, *RESUMABLE, name=name)
        monkeypatch.undo()
        torch.manual_seed(1234)  # whatever the new session's RNG holds, the checkpoint's is restored
        resumed = run(tmp_path, tiny_dataset, *RESUMABLE, "--resume_from_checkpoint", "latest", name=name)
        final = tmp_path / name / "checkpoints" / "checkpoint-6"
        assert_same_weights(weights(checkpoints / "checkpoint-6"), weights(final))
        assert resumed.history == straight.history and resumed.test_metrics == straight.test_metrics


KILLER = textwrap.dedent(
    """
    import os, runpy, signal, sys

    import hf_hstu.training.loop as loop

    save, kill_at = loop._save_checkpoint, int(os.environ["KILL_AT_STEP"])

    def save_then_die(run):
        save(run)
        if run.state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    loop._save_checkpoint = save_then_die
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


@pytest.mark.slow
def test_process_killed_with_sigkill_resumes_to_the_same_weights(tmp_path, tiny_dataset):
    """A real `scripts/train.py` process killed right after its mid-epoch checkpoint, resumed in a new process."""
    (tmp_path / "killer.py").write_text(KILLER)
    arguments = [*TINY, *RESUMABLE, "--dataset", str(tiny_dataset)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "KILL_AT_STEP": "4"}

    def train_process(*extra: str, killer: bool = False) -> int:
        script = [str(tmp_path / "killer.py")] if killer else []
        command = [sys.executable, *script, str(REPO_ROOT / "scripts" / "train.py"), *arguments, *extra]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, timeout=300).returncode

    assert train_process("--output_dir", str(tmp_path / "straight")) == 0
    assert train_process("--output_dir", str(tmp_path / "killed"), killer=True) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "checkpoints" / "checkpoint-6").exists()
    assert train_process("--output_dir", str(tmp_path / "killed"), "--resume_from_checkpoint", "latest") == 0
    assert_same_weights(
        weights(tmp_path / "straight/checkpoints/checkpoint-6"), weights(tmp_path / "killed/checkpoints/checkpoint-6")
    )


def test_validation_and_checkpoints_every_n_steps(tmp_path, tiny_dataset):
    result = run(
        tmp_path,
        tiny_dataset,
        *("--num_epochs", "2", "--eval_strategy", "steps", "--eval_steps", "2"),
        *("--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "2", "--early_stopping_patience", "9"),
    )
    # 3 steps per epoch: validations at steps 2 and 4, and at the last step (6); epochs as fractions
    assert [(record["step"], record["epoch"]) for record in result.history] == [(2, 0.6667), (4, 1.3333), (6, 2)]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    best = max(result.history, key=lambda record: record["validation/ndcg@10"])
    assert (result.best_step, result.best_epoch) == (best["step"], best["epoch"])


def test_no_checkpoints_and_no_validation_keep_the_last_model(tmp_path, tiny_dataset):
    result = run(tmp_path, tiny_dataset, "--num_epochs", "1", "--save_strategy", "no", "--eval_strategy", "no")
    assert not (tmp_path / "run" / "checkpoints").exists() and result.history == []
    assert (result.best_step, result.best_epoch, result.validation_metrics) == (3, 1, None)
    assert (tmp_path / "run" / "best_model" / "model.safetensors").is_file()


def test_schedule_accumulation_and_throughput_are_logged(tmp_path, tiny_dataset, monkeypatch):
    logged = []
    monkeypatch.setattr(loop.Accelerator, "log", lambda self, values, step=None, **kw: logged.append((step, values)))
    run(
        tmp_path,
        tiny_dataset,
        *("--report_to", "tensorboard", "--logging_steps", "1", "--num_epochs", "2", "--learning_rate", "0.01"),
        *("--batch_size", "8", "--gradient_accumulation_steps", "2", "--lr_scheduler_type", "linear"),
        *("--warmup_ratio", "0.3", "--eval_strategy", "no"),
    )
    train_logs = [(step, values) for step, values in logged if "train/loss" in values]
    assert [step for step, _ in train_logs] == [1, 2, 3, 4, 5, 6]  # 6 batches of 8 per epoch, 2 per step
    # linear warm-up over ceil(0.3 * 6) = 2 steps, then linear decay to 0 at step 6 (the rate after each step)
    expected = [0.01 * min(step / 2, (6 - step) / 4) for step in range(1, 7)]
    assert [values["train/learning_rate"] for _, values in train_logs] == pytest.approx(expected)
    assert [values["train/epoch"] for _, values in train_logs] == [0.3333, 0.6667, 1, 1.3333, 1.6667, 2]
    for _, values in train_logs:
        assert math.isfinite(values["train/loss"]) and values["train/sequences_per_second"] > 0
        # each step saw 16 sequences; the tokens per sequence of the training split, capped at max_seq_len 20
        assert 6 <= values["train/tokens_per_second"] / values["train/sequences_per_second"] <= 20


def test_min_epochs_holds_off_early_stopping(tmp_path, tiny_dataset):
    stopped = run(tmp_path, tiny_dataset, "--num_epochs", "4", "--early_stopping_patience", "0", name="first")
    assert [record["epoch"] for record in stopped.history] == [1]  # patience 0: stops at the first evaluation
    held = run(tmp_path, tiny_dataset, *("--num_epochs", "4", "--early_stopping_patience", "0", "--min_epochs", "3"))
    assert [record["epoch"] for record in held.history] == [1, 2, 3]


def test_early_stopping_counts_evaluations_without_improvement():
    stopping = EarlyStopping(patience=2, min_epochs=4)
    improved = [stopping.update(score, step, epoch) for score, step, epoch in [(0.5, 1, 1), (0.4, 2, 2), (0.6, 3, 3)]]
    assert improved == [True, False, True] and (stopping.best_metric, stopping.best_step) == (0.6, 3)
    assert not stopping.update(0.6, 4, 4) and not stopping.should_stop(epoch=4)  # one evaluation without improvement
    assert not stopping.update(0.1, 5, 3.5) and not stopping.should_stop(epoch=3.5)  # patience spent, before min
    assert stopping.should_stop(epoch=4)


def test_divergence_guard_names_the_step():
    guard = DivergenceGuard(factor=10.0, window=3)
    for step, loss in enumerate([4.0, 2.0, 3.0, 25.0], start=1):  # 25 < 10 x 3: a spike, not a divergence
        guard.check(loss, step, epoch=0, output_dir=Path("out"))
    assert guard.mean == pytest.approx(3.0 + (25.0 - 3.0) / 3)
    with pytest.raises(FloatingPointError, match=r"loss 1000 at step 5 \(epoch 1\) is more than 10 times"):
        guard.check(1000.0, 5, epoch=0, output_dir=Path("out"))
    with pytest.raises(FloatingPointError, match=r"The training loss is inf at step 6 \(epoch 3\)"):
        guard.check(float("inf"), 6, epoch=2, output_dir=Path("out"))
    DivergenceGuard(factor=None, window=1).check(1e9, 2, epoch=0, output_dir=Path("out"))  # only NaN/inf stop


def test_a_diverging_run_stops_at_the_step_and_keeps_its_checkpoint(tmp_path, tiny_dataset, monkeypatch):
    loss = TrainingObjective.loss

    def exploding_at_step_25(self, model, batch, accelerator=None):
        value, number = loss(self, model, batch, accelerator)
        exploding_at_step_25.calls += 1
        return (value * 1e6, number * 1e6) if exploding_at_step_25.calls == 25 else (value, number)

    exploding_at_step_25.calls = 0
    monkeypatch.setattr(TrainingObjective, "loss", exploding_at_step_25)
    flags = ("--batch_size", "4", "--divergence_factor", "2")  # 12 steps per epoch; the guard watches from step 21
    with pytest.raises(FloatingPointError, match=r"at step 25 \(epoch 3\) is more than 2 times its running mean"):
        run(tmp_path, tiny_dataset, *flags, "--num_epochs", "3")
    monkeypatch.undo()
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "checkpoint-12",
        "checkpoint-24",
    ]
    resumed = run(tmp_path, tiny_dataset, *flags, "--num_epochs", "2", "--resume_from_checkpoint", "latest")
    assert [record["step"] for record in resumed.history] == [12, 24]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--eval_strategy", "sometimes"), "eval_strategy must be one of no, steps, epoch, got 'sometimes'"),
        (("--save_strategy", "steps"), "save_strategy='steps' needs save_steps >= 1, got None"),
        (("--lr_scheduler_type", "cosine_warm"), "lr_scheduler_type must be one of constant, "),
        (("--negatives_from", "test"), "negatives_from must be one of catalogue, train, got 'test'"),
        (("--divergence_factor", "0.5"), "divergence_factor must be > 1"),
    ],
)
def test_bad_loop_settings_are_named(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_training_arguments(list(flags))


@pytest.mark.slow
def test_torch_compile_trains(tmp_path, tiny_dataset):
    """Two steps with the model's layers compiled by inductor (a C++ compiler builds its CPU kernels)."""
    model = tiny_model()
    loop._compile_blocks(model)
    compiled = [module for module in model.modules() if getattr(module, "_compiled_call_impl", None) is not None]
    assert compiled and len(compiled) == model.config.num_hidden_layers
    result = run(tmp_path, tiny_dataset, "--torch_compile", "true", "--max_steps", "2", "--dropout", "0.0")
    assert result.best_step == 2 and math.isfinite(result.test_metrics["ndcg@10"])
