"""scripts/push_dataset.py against the fake Hub: the pushed repository loads back (and trains with
`--dataset <hub id>`), its card has the source, licence note, statistics and preprocessing command, and data that may
not be redistributed need an explicit statement of rights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset

from hf_hstu.data import build_sequences, load_sequences, make_synthetic_interactions
from hf_hstu.hub.dataset_card import preprocessing_command
from hf_hstu.hub.push import push_dataset
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import train

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_push_script_card_and_training_from_the_hub(fake_hub, tmp_path):
    folder = save_tiny_dataset(tmp_path / "tiny")
    command = [sys.executable, str(REPO_ROOT / "scripts" / "push_dataset.py"), "--dataset", str(folder)]
    command += ["--repo_id", "org/tiny-sequences"]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-5000:]
    assert completed.stdout.strip() == f"{fake_hub.url}/datasets/org/tiny-sequences"

    files = set(HfApi().list_repo_files("org/tiny-sequences", repo_type="dataset"))
    assert {"README.md", "item_vocabulary.json", "user_vocabulary.json", "preprocessing.json"} <= files
    local, pushed = load_sequences(folder), load_sequences("org/tiny-sequences")
    assert {split: pushed[split].to_dict() for split in pushed} == {split: local[split].to_dict() for split in local}

    card = DatasetCard.load("org/tiny-sequences")
    text = card.content
    assert card.data.dataset_info is not None and card.data.configs  # datasets' own metadata is kept
    assert "hf_hstu" in card.data.tags
    assert "| 48 | 40 | 716 |" in text and "| train | 48 |" in text and "| test | 48 |" in text
    assert "python scripts/preprocess.py --dataset tiny --raw-dir RAW_DIR --output data/tiny" in text
    assert "responsible for holding the rights to publish these data" in text
    assert "leave-one-out" in text and 'load_sequences("org/tiny-sequences")' in text
    assert str(tmp_path) not in text  # nothing machine-local

    argv = [*TINY_TRAINING_ARGUMENTS, "--dataset", "org/tiny-sequences", "--output_dir", str(tmp_path / "run")]
    result = train(*parse_training_arguments([*argv, "--num_epochs", "1"]))
    assert result.test_metrics is not None
    model_card = (Path(result.best_model_dir) / "README.md").read_text()
    assert "python scripts/train.py --dataset org/tiny-sequences" in model_card


def test_non_redistributable_source_needs_the_rights_flag(fake_hub, tmp_path):
    interactions = make_synthetic_interactions(
        num_users=20, num_items=15, num_clusters=3, min_length=4, max_length=8, seed=0
    )
    folder = build_sequences(interactions, dataset_name="ml-100k").save(tmp_path / "ml-100k")
    with pytest.raises(PermissionError, match="holds MovieLens data .*Nothing was pushed: pass --i_have_the_rights"):
        push_dataset(folder, "org/ml-100k")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info("org/ml-100k")

    push_dataset(folder, "org/ml-100k", i_have_the_rights=True)
    card = DatasetCard.load("org/ml-100k")
    assert card.data.license == "other"
    assert "does not allow redistributing the data without separate permission from GroupLens" in card.content
    assert "MovieLens (`ml-100k`)" in card.content


def test_preprocessing_command_lists_what_differs_from_the_defaults():
    metadata = {"dataset": "amazon-books", "config": {"split": "temporal", "paper_filter": 5, "k_core": 10}}
    assert preprocessing_command(metadata) == (
        "python scripts/preprocess.py --dataset amazon-books --raw-dir RAW_DIR --split temporal --k-core 10 "
        "--output data/amazon-books"
    )
    metadata = json.loads(json.dumps({"dataset": "ml-1m", "config": {"split": "leave_one_out", "duplicates": "keep"}}))
    assert preprocessing_command(metadata, "out") == "python scripts/preprocess.py --dataset ml-1m --output out"
    metadata["config"]["duplicates"] = "drop"
    assert preprocessing_command(metadata, "out") == (
        "python scripts/preprocess.py --dataset ml-1m --duplicates drop --output out"
    )
