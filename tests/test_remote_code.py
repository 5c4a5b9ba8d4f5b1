"""A saved checkpoint loads with trust_remote_code in a process where hf_hstu (and triton) cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from recommender_testing import right_padded_batch, tiny_model

LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import torch

    class Hidden(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("hf_hstu", "triton"):
                raise ImportError(f"{name} is hidden in this test")
            return None

    sys.meta_path.insert(0, Hidden())
    sys.path = [p for p in sys.path if p not in ("", ".") and not p.endswith("/work/main")]
    from transformers import AutoModel

    checkpoint, inputs_file, outputs_file = sys.argv[1:4]
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    assert "hf_hstu" not in sys.modules and type(model).__module__.startswith("transformers_modules"), type(model)
    batch = {key: torch.tensor(value) for key, value in json.load(open(inputs_file)).items()}
    outputs = model(**batch)
    recommendations = model.recommend(**batch, k=4)
    json.dump({"user_embeddings": outputs.user_embeddings.tolist(), "item_ids": recommendations.item_ids.tolist()},
              open(outputs_file, "w"))
    """
)


@pytest.mark.parametrize("model_type", ["hstu", "sasrec"])
def test_trust_remote_code_without_the_package(model_type, tmp_path):
    model = tiny_model(model_type).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    batch = right_padded_batch()
    inputs = {key: batch[key].tolist() for key in ("input_ids", "attention_mask", "timestamps", "target_timestamps")}
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    (tmp_path / "loader.py").write_text(LOADER)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "loader.py"),
            str(checkpoint),
            str(tmp_path / "inputs.json"),
            str(tmp_path / "outputs.json"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads((tmp_path / "outputs.json").read_text())
    expected = model(**{key: batch[key] for key in inputs})
    torch.testing.assert_close(torch.tensor(remote["user_embeddings"]), expected.user_embeddings, atol=1e-6, rtol=0)
    assert remote["item_ids"] == model.recommend(**{key: batch[key] for key in inputs}, k=4).item_ids.tolist()
