"""The exported user encoder: the traceable encoder equals `embed_users`, and `scripts/export.py`'s files (the
`torch.export` program and the ONNX graph run by onnxruntime) give the model's scores for histories of other batch
sizes and lengths than the traced ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recommender_testing import NUM_ITEMS, right_padded_batch, tiny_model

from hf_hstu.data import ItemVocabulary
from hf_hstu.serving import UserEncoder, encoder_inputs, export_user_encoder, load_export_config, load_item_table

REPO_ROOT = Path(__file__).resolve().parents[1]
RAW_IDS = [f"item-{number}" for number in range(NUM_ITEMS)]


def _histories(seed: int, lengths) -> dict[str, list]:
    """Python lists of histories (ids 1..NUM_ITEMS), increasing timestamps, ratings and request times."""
    batch = right_padded_batch(seed, lengths)
    rows = range(len(lengths))
    return {
        "histories": [batch["input_ids"][row, :n].tolist() for row, n in zip(rows, lengths, strict=True)],
        "timestamps": [batch["timestamps"][row, :n].tolist() for row, n in zip(rows, lengths, strict=True)],
        "ratings": [batch["ratings"][row, :n].tolist() for row, n in zip(rows, lengths, strict=True)],
        "request_times": batch["target_timestamps"].tolist(),
    }


def _model_embeddings(model, data: dict[str, list]) -> torch.Tensor:
    """`embed_users` on the full histories, right-padded (the model truncates them to max_seq_len itself)."""
    width = max(len(history) for history in data["histories"])

    def padded(rows):
        return torch.tensor([row + [0] * (width - len(row)) for row in rows])

    return model.embed_users(
        input_ids=padded(data["histories"]),
        timestamps=padded(data["timestamps"]),
        target_timestamps=torch.tensor(data["request_times"]),
        ratings=padded(data["ratings"]) if model.requires_ratings else None,
    )


@pytest.mark.parametrize(
    "model_type, overrides",
    [
        ("hstu", {}),
        ("hstu", {"use_time_bias": False}),
        ("hstu", {"input_preprocessor": "combined_item_rating", "output_postprocessor": "layer_norm"}),
        ("sasrec", {}),
        ("sasrec", {"input_preprocessor": "rated"}),
    ],
)
def test_user_encoder_equals_embed_users(model_type, overrides):
    model = tiny_model(model_type, **overrides).eval()
    encoder = UserEncoder(model)
    # Lengths 1, max_seq_len (8) and beyond it (truncated by encoder_inputs and by the model alike).
    data = _histories(seed=1, lengths=(3, 1, 8, 12, 5))
    inputs = encoder_inputs(
        encoder.input_names, 8, data["histories"], data["timestamps"], data["request_times"], data["ratings"]
    )
    assert list(inputs) == list(encoder.input_names)
    assert inputs["lengths"].tolist() == [3, 1, 8, 8, 5]
    with torch.no_grad():
        embeddings = encoder(**inputs)
    torch.testing.assert_close(embeddings, _model_embeddings(model, data), rtol=0, atol=1e-5)


def test_encoder_inputs_name_what_is_missing():
    encoder = UserEncoder(tiny_model("hstu"))
    assert encoder.input_names == ("input_ids", "lengths", "timestamps", "target_timestamps")
    with pytest.raises(ValueError, match="target_timestamps is required"):
        encoder_inputs(encoder.input_names, 8, [[1, 2]], [[10, 20]])
    with pytest.raises(ValueError, match=r"timestamps\[0\] has 1 values but history 0 has 2"):
        encoder_inputs(encoder.input_names, 8, [[1, 2]], [[10]], [30])
    with pytest.raises(ValueError, match="every history needs at least one item"):
        encoder_inputs(encoder.input_names, 8, [[1], []], [[1], []], [3, 3])


def test_mixture_of_logits_is_not_exported(tmp_path):
    model = tiny_model("hstu", similarity="mol", mol_component_dim=4)
    with pytest.raises(ValueError, match="similarity='mol' cannot be exported"):
        export_user_encoder(model, tmp_path, onnx=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An HSTU checkpoint (both biases, string item ids) exported by scripts/export.py in a fresh process."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_model("hstu").eval()
    model.save_pretrained(root / "checkpoint")
    ItemVocabulary(RAW_IDS).save(root / "checkpoint")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "export.py"), "--model", str(root / "checkpoint")]
    result = subprocess.run(
        [*command, "--output_dir", str(root / "exported")], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-5000:]
    printed = json.loads(result.stdout[result.stdout.index("{") :])
    return model, root / "exported", printed


def _scores(model, data) -> torch.Tensor:
    """The PyTorch scores of every item (column 0, padding, dropped)."""
    return (_model_embeddings(model, data) @ model.item_table().T)[:, 1:]


@pytest.mark.slow
def test_onnx_round_trip_matches_pytorch_scores(exported):
    onnxruntime = pytest.importorskip("onnxruntime")
    model, folder, printed = exported
    assert printed["onnx"] == str(folder / "user_encoder.onnx")
    config = load_export_config(folder)
    assert config["inputs"] == ["input_ids", "lengths", "timestamps", "target_timestamps"]
    assert ItemVocabulary.load(folder).raw_ids == RAW_IDS
    item_table = load_item_table(folder)
    torch.testing.assert_close(item_table, model.item_table(), rtol=0, atol=0)

    session = onnxruntime.InferenceSession(str(folder / "user_encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == config["inputs"]
    # Other batch sizes and lengths than the traced (2 histories of 3 and 2 events): 1 and max_seq_len included.
    for seed, lengths in ((2, (1,)), (3, (8, 2, 5, 1, 7, 3, 11)), (4, (4, 4, 4))):
        data = _histories(seed, lengths)
        inputs = encoder_inputs(
            config["inputs"], config["max_seq_len"], data["histories"], data["timestamps"], data["request_times"]
        )
        (embeddings,) = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
        scores = (torch.from_numpy(embeddings) @ item_table.T)[:, 1:]
        expected = _scores(model, data)
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)
        top = model.recommend(**_recommend_inputs(data), k=5, filter_seen=False).item_ids
        assert torch.equal(scores.topk(5).indices + 1, top)


def _recommend_inputs(data) -> dict[str, torch.Tensor]:
    width = max(len(history) for history in data["histories"])
    return {
        "input_ids": torch.tensor([row + [0] * (width - len(row)) for row in data["histories"]]),
        "timestamps": torch.tensor([row + [0] * (width - len(row)) for row in data["timestamps"]]),
        "target_timestamps": torch.tensor(data["request_times"]),
    }


@pytest.mark.slow
def test_torch_export_program_is_dynamic(exported):
    model, folder, _ = exported
    program = torch.export.load(folder / "user_encoder.pt2").module()
    encoder = UserEncoder(model)  # its input names are the exported ones
    for seed, lengths in ((5, (6, 1, 8, 2, 3)), (6, (1,))):
        data = _histories(seed, lengths)
        inputs = encoder_inputs(encoder.input_names, 8, data["histories"], data["timestamps"], data["request_times"])
        scores = (program(**inputs) @ load_item_table(folder).T)[:, 1:]
        torch.testing.assert_close(scores, _scores(model, data), rtol=0, atol=1e-4)
