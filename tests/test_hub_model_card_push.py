"""What a pushed model shows on the Hub: the card's code loads the Hub id, its training command and settings name no
path of the training machine, its metrics table comes with the protocol, and config.json holds nothing
machine-local."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, hf_hub_download
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset

from hf_hstu.hub.push import push_checkpoint
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import train

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return save_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def _train(tmp_path, dataset, *extra):
    argv = [*TINY_TRAINING_ARGUMENTS, "--dataset", str(dataset), "--output_dir", str(tmp_path / "run"), *extra]
    return train(*parse_training_arguments([*argv, "--num_epochs", "1"]))


def _check_card(repo_id: str, local_paths: list[Path], metrics: dict) -> str:
    card = ModelCard.load(repo_id)
    text = str(card)
    assert f'AutoModel.from_pretrained("{repo_id}")' in text
    assert f'Recommender.from_pretrained("{repo_id}")' in text
    assert "path/to/checkpoint" not in text
    for path in local_paths:
        assert str(path) not in text, path
    training = text.split("## Training")[1]
    assert (
        "python scripts/preprocess.py --dataset tiny --raw-dir RAW_DIR --output data/tiny && python scripts/train.py "
        "--dataset data/tiny --max_seq_len 20" in training
    )
    assert '"dataset": "data/tiny"' in training and "output_dir" not in training
    evaluation = text.split("## Evaluation")[1].split("## Training")[0]
    assert "Protocol: leave-one-out" in evaluation and f"| HR@10 | {metrics['hr@10']:.4f} |" in evaluation
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == metrics
    config_text = text.split("- Model configuration:")[1].split("```", 2)[1]
    assert "_name_or_path" not in config_text and "LABEL_0" not in config_text
    return text


def test_pushed_card_and_config_name_the_hub_id_and_no_local_path(fake_hub, tmp_path, tiny_dataset):
    result = _train(tmp_path, tiny_dataset)  # trained without a Hub id, pushed afterwards with the script
    checkpoint = Path(result.best_model_dir)
    assert 'from_pretrained("path/to/checkpoint")' in (checkpoint / "README.md").read_text()
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), "--checkpoint", str(checkpoint),
         "--repo_id", "org/pushed"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-5000:]
    _check_card("org/pushed", [tmp_path, tiny_dataset, REPO_ROOT], result.test_metrics)
    pushed_config = json.loads(Path(hf_hub_download("org/pushed", "config.json")).read_text())
    assert pushed_config == json.loads((checkpoint / "config.json").read_text())
    assert not {"_name_or_path", "id2label", "label2id"} & set(pushed_config)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["command"].startswith("python scripts/pre")

    # a checkpoint saved the way transformers 4 did: the local folder and placeholder labels in config.json
    legacy = {"_name_or_path": str(checkpoint), "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}
    legacy["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}
    (checkpoint / "config.json").write_text(json.dumps({**pushed_config, **legacy}, indent=2))
    push_checkpoint(checkpoint, "org/legacy")
    assert json.loads(Path(hf_hub_download("org/legacy", "config.json")).read_text()) == pushed_config
    assert "_name_or_path" in (checkpoint / "config.json").read_text()  # the local folder is left as it was


def test_training_push_shows_the_hub_id(fake_hub, tmp_path, tiny_dataset):
    result = _train(tmp_path, tiny_dataset, "--push_to_hub", "--hub_model_id", "org/trained")
    _check_card("org/trained", [tmp_path, tiny_dataset, REPO_ROOT], result.test_metrics)
