"""Training with `--push_to_hub` against the fake Hub, then loading the pushed repository in fresh processes, with
hf_hstu importable and with it hidden (trust_remote_code), and pushing an existing checkpoint with the script."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from recommender_testing import TINY_TRAINING_ARGUMENTS, load_in_fresh_process, save_tiny_dataset
from transformers import AutoModel

from hf_hstu.data import SequenceCollator, load_sequences
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_ARGUMENTS = ["--num_epochs", "1", *TINY_TRAINING_ARGUMENTS]
CHECKPOINT_FILES = {
    "config.json",
    "model.safetensors",
    "item_vocabulary.json",
    "README.md",
    "configuration_hstu.py",
    "modeling_hstu.py",
}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return save_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def _package_python_path() -> str:
    """PYTHONPATH for subprocesses that import hf_hstu from this checkout (installed or not)."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def _recommendation_inputs(dataset: Path, max_seq_len: int) -> dict[str, torch.Tensor]:
    """The first 8 test histories, collated, with their request times."""
    rows = load_sequences(dataset)["test"].select(range(8))
    batch = SequenceCollator(max_seq_len=max_seq_len)(list(rows))
    return {key: batch[key] for key in ("input_ids", "attention_mask", "timestamps", "target_timestamps")}


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_push_to_hub_then_load_with_and_without_the_package(fake_hub, tmp_path, tiny_dataset):
    argv = ["--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / "run"), *TINY_ARGUMENTS]
    result = train(*parse_training_arguments([*argv, "--push_to_hub", "--hub_model_id", "org/tiny-hstu"]))

    api = HfApi()
    assert CHECKPOINT_FILES <= set(api.list_repo_files("org/tiny-hstu"))
    assert _sha256(hf_hub_download("org/tiny-hstu", "model.safetensors")) == _sha256(
        Path(result.best_model_dir) / "model.safetensors"
    )
    config = json.loads(Path(hf_hub_download("org/tiny-hstu", "config.json")).read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_hstu.HSTUConfig", "AutoModel": "modeling_hstu.HSTUModel"}
    vocabulary = json.loads(Path(hf_hub_download("org/tiny-hstu", "item_vocabulary.json")).read_text())
    assert vocabulary == json.loads((tiny_dataset / "item_vocabulary.json").read_text())
    card = ModelCard.load("org/tiny-hstu")
    (evaluation,) = [r for r in card.data.eval_results if r.metric_type == "hr@10"]
    assert evaluation.metric_value == result.test_metrics["hr@10"]
    assert (evaluation.dataset_name, evaluation.dataset_split) == ("tiny", "test")

    local = AutoModel.from_pretrained(result.best_model_dir)
    inputs = _recommendation_inputs(tiny_dataset, local.config.max_seq_len)
    expected = local.recommend(**inputs, k=5)
    for mode in ("installed", "hidden"):
        # The fake_hub fixture put the endpoint, HF_HOME and token in os.environ.
        python_path = "" if mode == "hidden" else _package_python_path()
        loaded = load_in_fresh_process(
            tmp_path, "org/tiny-hstu", mode, inputs, {**os.environ, "PYTHONPATH": python_path}
        )
        assert loaded["item_ids"] == expected.item_ids.tolist(), mode
        torch.testing.assert_close(torch.tensor(loaded["scores"]), expected.scores, atol=1e-6, rtol=0)


def test_push_script_makes_a_card_for_a_checkpoint_without_one(fake_hub, tmp_path, tiny_dataset):
    argv = ["--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / "run"), *TINY_ARGUMENTS]
    result = train(*parse_training_arguments(argv))
    checkpoint = Path(result.best_model_dir)
    (checkpoint / "README.md").unlink()
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "push_to_hub.py"),
        "--checkpoint",
        str(checkpoint),
        "--repo_id",
        "org/other",
        "--dataset_name",
        "tiny",
        "--metrics_file",
        str(tmp_path / "run" / "results.json"),
    ]
    completed = subprocess.run(
        command, env={**os.environ, "PYTHONPATH": _package_python_path()}, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    assert completed.stdout.strip().endswith(fake_hub.get_repo("model", "org/other").head)

    assert CHECKPOINT_FILES <= set(HfApi().list_repo_files("org/other"))
    assert _sha256(hf_hub_download("org/other", "model.safetensors")) == _sha256(checkpoint / "model.safetensors")
    metrics = {r.metric_type: r.metric_value for r in ModelCard.load("org/other").data.eval_results}
    assert metrics == result.test_metrics


def test_push_to_hub_without_a_repo_id_fails_before_training(tmp_path, tiny_dataset):
    output_dir = tmp_path / "run"
    argv = ["--dataset", str(tiny_dataset), "--output_dir", str(output_dir), "--push_to_hub", *TINY_ARGUMENTS]
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        train(*parse_training_arguments(argv))
    assert not output_dir.exists()
