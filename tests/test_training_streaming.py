"""Training from the train split streamed as a `datasets.IterableDataset` (`--streaming true`): it trains, validates
and saves, is reproducible, resumes exactly in the middle of an epoch, and splits across processes."""

import json
import sys

import pytest
import torch
from launch_testing import REPO_ROOT, free_port, run_successfully
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset
from safetensors.torch import load_file

from hf_hstu.training import loop
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import train

# 48 training sequences in batches of 8, two batches per optimiser step: 6 batches and 3 steps per epoch, with
# dropout, a warmed-up cosine schedule and sample_ratio draws, which a resume must all restore.
STREAMING = [
    *TINY_TRAINING_ARGUMENTS,
    *("--streaming", "true", "--batch_size", "8", "--gradient_accumulation_steps", "2", "--num_epochs", "2"),
    *("--lr_scheduler_type", "cosine", "--warmup_steps", "2", "--sample_ratio", "0.8"),
    *("--early_stopping_patience", "10", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "10"),
]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return save_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def run(tmp_path, tiny_dataset, name: str, *extra: str):
    return train(
        *parse_training_arguments(
            [*STREAMING, "--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / name), *extra]
        )
    )


def weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


class Killed(Exception):
    """Stands for the end of a process right after a checkpoint was saved."""


def test_streaming_run_trains_evaluates_saves_and_is_reproducible(tmp_path, tiny_dataset):
    first = run(tmp_path, tiny_dataset, "first")
    # 3 optimiser steps per epoch, validated at each epoch's end (epochs counted from the capped batches)
    assert [(record["step"], record["epoch"]) for record in first.history] == [(3, 1), (6, 2)]
    assert first.test_metrics["ndcg@10"] > 0 and (tmp_path / "first" / "best_model" / "model.safetensors").is_file()
    after_one, after_two = weights(tmp_path / "first", 3), weights(tmp_path / "first", 6)
    assert any(not torch.equal(after_one[name], after_two[name]) for name in after_one)  # the second epoch trained
    second = run(tmp_path, tiny_dataset, "second")
    assert_same_weights(weights(tmp_path / "first", 6), weights(tmp_path / "second", 6))
    assert second.history == first.history and second.test_metrics == first.test_metrics


def test_streaming_differs_from_the_memory_mapped_order(tmp_path, tiny_dataset):
    streamed = run(tmp_path, tiny_dataset, "streamed", "--num_epochs", "1")
    mapped = run(tmp_path, tiny_dataset, "mapped", "--num_epochs", "1", "--streaming", "false")
    assert streamed.history[-1]["step"] == mapped.history[-1]["step"] == 3
    assert streamed.history != mapped.history  # another row order: a streamed run really read the stream


def test_streaming_run_resumed_mid_epoch_equals_an_uninterrupted_one(tmp_path, tiny_dataset, monkeypatch):
    straight = run(tmp_path, tiny_dataset, "straight")
    state = json.loads((tmp_path / "straight/checkpoints/checkpoint-4/training_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"], state["global_step"]) == (1, 2, 4)  # mid-epoch
    save = loop._save_checkpoint

    def save_then_die(run_state):
        save(run_state)
        if run_state.state.global_step == 4:
            raise Killed

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path, tiny_dataset, "killed")
    monkeypatch.undo()
    torch.manual_seed(1234)  # whatever the new session's RNG holds, the checkpoint's is restored
    resumed = run(tmp_path, tiny_dataset, "killed", "--resume_from_checkpoint", "latest")
    assert_same_weights(weights(tmp_path / "straight", 6), weights(tmp_path / "killed", 6))
    assert resumed.history == straight.history and resumed.test_metrics == straight.test_metrics


def test_a_stream_shorter_than_the_epoch_is_an_error(tmp_path, tiny_dataset, monkeypatch):
    streamed = loop.streaming_train_split
    monkeypatch.setattr(loop, "streaming_train_split", lambda *args: streamed(*args).take(20))  # 3 of 6 batches
    with pytest.raises(RuntimeError, match="Process 0's training data ended after 3 of the epoch's 6 batches"):
        run(tmp_path, tiny_dataset, "short", "--gradient_accumulation_steps", "1")


@pytest.mark.slow
def test_two_processes_stream_their_own_rows_and_take_the_same_steps(tmp_path):
    """2 processes (gloo DDP on CPU) read 30 and 31 of the 61 rows: both take len(train) // batch_size = 7 steps an
    epoch (no hang, no re-split), with per-process batches of 4."""
    dataset = save_tiny_dataset(tmp_path / "tiny", num_users=61)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), str(REPO_ROOT / "scripts" / "train.py")]
    command += [*TINY_TRAINING_ARGUMENTS, "--streaming", "true", "--batch_size", "8", "--num_epochs", "2"]
    command += ["--dataset", str(dataset), "--output_dir", str(tmp_path / "run")]
    run_successfully(command, tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_processes"] == 2
    assert [(record["step"], record["epoch"]) for record in results["history"]] == [(7, 1), (14, 2)]
