"""A saved checkpoint loads with trust_remote_code in a process where hf_hstu (and triton) cannot be imported."""

import os

import pytest
import torch
from recommender_testing import load_in_fresh_process, right_padded_batch, tiny_model


@pytest.mark.parametrize("model_type", ["hstu", "sasrec"])
def test_trust_remote_code_without_the_package(model_type, tmp_path):
    model = tiny_model(model_type).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    batch = right_padded_batch()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "timestamps", "target_timestamps")}
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    remote = load_in_fresh_process(tmp_path, str(checkpoint), "hidden", inputs, env)
    expected = model(**inputs)
    torch.testing.assert_close(torch.tensor(remote["user_embeddings"]), expected.user_embeddings, atol=1e-6, rtol=0)
    assert remote["item_ids"] == model.recommend(**inputs, k=5).item_ids.tolist()
