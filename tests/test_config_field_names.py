"""A misspelt model-config field warns with the closest field (keyword, config.json), and is an error in
`--config_overrides`; the keys transformers itself writes never warn."""

import json

import pytest
from transformers import AutoConfig
from transformers.testing_utils import CaptureLogger

from hf_hstu import HSTUConfig, SASRecConfig
from hf_hstu.modeling import configuration_recommender
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.model_config import build_model_config


def _warnings(make) -> str:
    with CaptureLogger(configuration_recommender.logger) as captured:
        make()
    return captured.out


def test_misspelt_keyword_warns_with_the_closest_field():
    out = _warnings(lambda: HSTUConfig(num_items=3, num_hiden_layers=3))
    assert "HSTUConfig has no field 'num_hiden_layers'" in out and "Did you mean 'num_hidden_layers'?" in out
    out = _warnings(lambda: SASRecConfig(num_items=3, hidden_dropot=0.1))
    assert "Did you mean 'hidden_dropout'?" in out
    assert "no field 'colour'" in _warnings(lambda: HSTUConfig(num_items=3, colour="red"))


def test_misspelt_key_in_config_json_warns(tmp_path):
    HSTUConfig(num_items=5).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_attention_head": 4}))
    out = _warnings(lambda: AutoConfig.from_pretrained(tmp_path))
    assert "no field 'num_attention_head'" in out and "Did you mean 'num_attention_heads'?" in out


def test_transformers_own_keys_do_not_warn(tmp_path):
    HSTUConfig(num_items=5).save_pretrained(tmp_path)
    assert _warnings(lambda: AutoConfig.from_pretrained(tmp_path)) == ""
    config = json.loads((tmp_path / "config.json").read_text())
    legacy = {  # what older transformers versions and model saving write beside the fields
        "_name_or_path": "/home/someone/run/best_model",
        "architectures": ["HSTUModel"],
        "dtype": "float32",
        "torch_dtype": "float32",
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
        "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        "use_cache": True,
        "pad_token_id": None,
        "tie_word_embeddings": False,
        "_attn_implementation_autoset": True,
        "output_attentions": False,
        "length_group_size": 32,  # a config field of earlier hf_hstu versions, now a run-time setting
    }
    (tmp_path / "config.json").write_text(json.dumps({**config, **legacy}))
    assert _warnings(lambda: AutoConfig.from_pretrained(tmp_path)) == ""
    assert "length_group_size" not in AutoConfig.from_pretrained(tmp_path).to_dict()
    assert _warnings(lambda: HSTUConfig(num_items=5, attn_implementation="eager", num_labels=2)) == ""


def test_misspelt_config_override_is_an_error_naming_the_closest_field():
    model_args = parse_training_arguments(["--config_overrides", "max_ouput_len=5"])[0]
    with pytest.raises(ValueError, match="Did you mean 'max_output_len'"):
        build_model_config(model_args, num_items=10)
    model_args = parse_training_arguments(["--config_overrides", "output_attentions=true"])[0]
    with pytest.raises(ValueError, match="is not 'field=value' with a field of HSTUConfig"):
        build_model_config(model_args, num_items=10)  # a transformers setting, not a field of the model


def test_number_overrides_are_typed():
    model_args = parse_training_arguments(["--model_type", "sasrec", "--config_overrides", "intermediate_size=7"])[0]
    assert build_model_config(model_args, num_items=10).intermediate_size == 7
