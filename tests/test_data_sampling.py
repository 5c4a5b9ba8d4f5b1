"""sample_ratio in training: the reference code's sampling of long histories, reproducible from the seed."""

from __future__ import annotations

import pytest
import torch
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset
from safetensors.torch import load_file

from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import train


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return save_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def weights(tmp_path, tiny_dataset, name: str, *extra: str) -> dict[str, torch.Tensor]:
    argv = [*TINY_TRAINING_ARGUMENTS, "--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / name)]
    train(*parse_training_arguments([*argv, "--num_epochs", "2", "--early_stopping_patience", "10", *extra]))
    last = max((tmp_path / name / "checkpoints").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return load_file(last / "model.safetensors")


def test_training_with_sample_ratio_is_reproducible_and_differs_from_whole_histories(tmp_path, tiny_dataset):
    sampled = weights(tmp_path, tiny_dataset, "sampled", "--sample_ratio", "0.5")
    again = weights(tmp_path, tiny_dataset, "again", "--sample_ratio", "0.5")
    whole = weights(tmp_path, tiny_dataset, "whole")
    assert all(torch.equal(sampled[name], again[name]) for name in sampled)
    assert not all(torch.equal(sampled[name], whole[name]) for name in sampled)
    with pytest.raises(ValueError, match="sample_ratio must be in"):
        weights(tmp_path, tiny_dataset, "bad", "--sample_ratio", "0")
