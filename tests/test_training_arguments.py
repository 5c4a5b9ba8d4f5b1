"""YAML training configs: numbers written in scientific notation, and every preset file read back as its preset."""

from pathlib import Path

import pytest
import yaml

from hf_hstu.training.arguments import PRESETS, parse_training_arguments

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "configs"


def _resolved(argv: list[str]) -> dict:
    values = {}
    for arguments in parse_training_arguments(argv):
        values.update(vars(arguments))
    return values


def test_scientific_notation_is_a_number(tmp_path):
    config_file = tmp_path / "run.yaml"
    # PyYAML (YAML 1.1) reads 1e-3 and 2e4 as strings, not numbers
    config_file.write_text("learning_rate: 1e-3\nmax_grad_norm: 5E-1\nmax_steps: 2e4\nweight_decay: 0\n")
    assert isinstance(yaml.safe_load(config_file.read_text())["learning_rate"], str)
    values = _resolved(["--config", str(config_file)])
    assert values["learning_rate"] == 1e-3 and isinstance(values["learning_rate"], float)
    assert values["max_grad_norm"] == 0.5 and values["max_steps"] == 20000 and isinstance(values["max_steps"], int)
    assert values["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("learning_rate: fast\n", "field 'learning_rate' must be float, got 'fast'"),
        ("max_steps: 1e-1\n", r"field 'max_steps' must be int or NoneType, got '1e-1'"),
        ("learning_rat: 0.1\n", r"unknown field\(s\) \['learning_rat'\]. Did you mean 'learning_rate'"),
    ],
)
def test_values_that_are_not_numbers_are_named(tmp_path, yaml_text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        parse_training_arguments(["--config", str(config_file)])


@pytest.mark.parametrize("config_file", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_preset_file_reads_back_as_its_preset(config_file):
    written = yaml.safe_load(config_file.read_text())
    assert written["preset"] == config_file.stem and config_file.stem in PRESETS
    values = _resolved(["--config", str(config_file)])
    for name, value in {**PRESETS[config_file.stem], **written}.items():
        assert values[name] == value, name


def test_every_preset_has_a_file():
    assert sorted(path.stem for path in CONFIGS.glob("*.yaml")) == sorted(PRESETS)
