"""A truncated or corrupt model.safetensors is reported with its path and what is wrong with it, when loaded from a
folder, from the Hub cache, through Recommender, evaluate_checkpoint and scripts/evaluate.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from recommender_testing import save_tiny_dataset, tiny_model
from transformers import AutoModel

from hf_hstu import Recommender
from hf_hstu.data import ItemVocabulary
from hf_hstu.evaluation.ranking import evaluate_checkpoint
from hf_hstu.modeling.checkpoint_files import CorruptWeightsError, safetensors_problem

REPO_ROOT = Path(__file__).resolve().parents[1]


def _save_checkpoint(folder: Path) -> Path:
    model = tiny_model("hstu")
    model.save_pretrained(folder)
    ItemVocabulary([f"i{n}" for n in range(model.config.num_items)]).save(folder)
    return folder / "model.safetensors"


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_problems_of_a_safetensors_file_are_described(tmp_path):
    weights = _save_checkpoint(tmp_path / "ckpt")
    assert safetensors_problem(weights) is None
    data = weights.read_bytes()
    broken = tmp_path / "broken.safetensors"
    for content, expected in [
        (data[:5], "holds 5 bytes"),
        ((10**9).to_bytes(8, "little") + b"{}", "header announces 1000000000 bytes"),
        ((4).to_bytes(8, "little") + b"{no}", "not valid safetensors JSON"),
        (
            data[: len(data) // 2],
            f"holds {len(data) // 2} bytes but its header describes {len(data)} bytes: it is trun",
        ),
        (data + b"extra", f"holds {len(data) + 5} bytes but its header describes {len(data)} bytes: it is corrupt"),
    ]:
        broken.write_bytes(content)
        assert expected in safetensors_problem(broken)


def test_truncated_weights_in_a_folder_are_named(tmp_path):
    weights = _save_checkpoint(tmp_path / "ckpt")
    _cut_in_half(weights)
    expected = f"the weights file {weights} is unreadable: it holds .* bytes but its header describes .* truncated"
    with pytest.raises(CorruptWeightsError, match=expected):
        Recommender.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CorruptWeightsError, match=expected):
        AutoModel.from_pretrained(tmp_path / "ckpt")
    dataset = save_tiny_dataset(tmp_path / "data")
    with pytest.raises(CorruptWeightsError, match=expected):
        evaluate_checkpoint(str(tmp_path / "ckpt"), str(dataset))

    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--model", str(tmp_path / "ckpt"),
         "--dataset", str(dataset)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode != 0
    assert f"CorruptWeightsError: Cannot load {tmp_path / 'ckpt'}: the weights file {weights}" in completed.stderr


def test_truncated_weights_in_the_hub_cache_are_named(fake_hub, tmp_path):
    _save_checkpoint(tmp_path / "ckpt")
    api = HfApi()
    api.create_repo("org/tiny")
    api.upload_folder(folder_path=str(tmp_path / "ckpt"), repo_id="org/tiny")
    Recommender.from_pretrained("org/tiny")  # downloads into the cache
    (cached,) = Path(os.environ["HF_HOME"], "hub").glob("models--org--tiny/snapshots/*/model.safetensors")
    _cut_in_half(cached.resolve())
    with pytest.raises(CorruptWeightsError, match=f"Cannot load org/tiny: the weights file {cached} is unreadable"):
        Recommender.from_pretrained("org/tiny")


def test_automodel_names_the_truncated_file(tmp_path):
    weights = _save_checkpoint(tmp_path / "ckpt")
    _cut_in_half(weights)
    with pytest.raises(CorruptWeightsError, match=f"the weights file {weights} is unreadable"):
        AutoModel.from_pretrained(tmp_path / "ckpt")
