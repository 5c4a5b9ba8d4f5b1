"""The training loop as a user runs it: arguments and presets, train -> best model -> reload -> recommend, exact
resumption, and the errors for bad input."""

import json

import pytest
import torch
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset
from safetensors.torch import load_file
from transformers import AutoModel

from hf_hstu.data import ItemVocabulary
from hf_hstu.training.arguments import PRESETS, parse_training_arguments
from hf_hstu.training.loop import train
from hf_hstu.training.model_config import build_model_config

TINY = [*TINY_TRAINING_ARGUMENTS, "--top_k", "5,10"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return save_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def run(tmp_path, tiny_dataset, *extra: str, name: str = "run"):
    argv = [*TINY, "--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / name), *extra]
    return train(*parse_training_arguments(argv))


def test_presets_config_file_and_flags_resolve_in_order(tmp_path):
    model_args, _, training_args = parse_training_arguments(["--preset", "ml-1m-hstu"])
    assert (model_args.max_seq_len, model_args.hidden_size, model_args.num_hidden_layers) == (200, 50, 2)
    assert (model_args.attention_dim, model_args.dropout, training_args.num_epochs) == (50, 0.2, 101)
    config_file = tmp_path / "run.yaml"
    config_file.write_text("preset: books-hstu-large\nbatch_size: 64\nlearning_rate: 0.002\n")
    model_args, data_args, training_args = parse_training_arguments(
        ["--config", str(config_file), "--batch_size", "32"]
    )
    assert (model_args.num_hidden_layers, model_args.num_attention_heads, model_args.num_negatives) == (16, 8, 512)
    assert (training_args.batch_size, training_args.learning_rate, data_args.dataset) == (32, 0.002, "amazon-books")
    sasrec = PRESETS["ml-1m-sasrec"]
    assert sasrec["model_type"] == "sasrec" and "attention_dim" not in sasrec
    config = build_model_config(parse_training_arguments(["--preset", "ml-1m-sasrec"])[0], num_items=3706)
    assert config.model_type == "sasrec" and config.intermediate_size == 50 and config.attention_dropout == 0.2
    config = build_model_config(parse_training_arguments(["--preset", "ml-1m-hstu"])[0], num_items=3706)
    assert config.attention_normalization == 211 and config.linear_dropout == 0.2


@pytest.mark.parametrize(
    ("yaml_text", "argv", "message"),
    [
        ("", ["--preset", "ml-2m-hstu"], "Unknown preset 'ml-2m-hstu'. Available presets: "),
        ("batch_size: many\n", [], "field 'batch_size' must be int, got 'many'"),
        ("use_time_bias: 1\n", [], "field 'use_time_bias' must be bool, got 1"),
        ("batchsize: 4\n", [], r"unknown field\(s\) \['batchsize'\]"),
        ("- 1\n", [], "expected a mapping"),
    ],
)
def test_bad_arguments_raise_named_errors(tmp_path, yaml_text, argv, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        parse_training_arguments(["--config", str(config_file), *argv])


def test_config_overrides():
    model_args = parse_training_arguments(["--config_overrides", "concat_ua=true,max_output_len=5"])[0]
    config = build_model_config(model_args, num_items=10)
    assert config.concat_ua is True and config.max_output_len == 5
    for bad, message in [
        ("concat_ua=maybe", "must be true or false"),
        ("max_output_len=x", "must be int"),
        ("nonsense=1", "is not 'field=value' with a field of HSTUConfig"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_model_config(parse_training_arguments(["--config_overrides", bad])[0], num_items=10)


def test_train_saves_a_best_model_that_reloads_and_recommends(tmp_path, tiny_dataset):
    result = run(tmp_path, tiny_dataset, "--num_epochs", "3")
    output = tmp_path / "run"
    saved = json.loads((output / "results.json").read_text())
    assert saved["best_epoch"] == result.best_epoch and len(saved["history"]) == 3
    assert set(result.test_metrics) >= {"hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr"}
    assert 0.0 <= result.test_metrics["ndcg@10"] <= result.test_metrics["hr@10"] <= 1.0
    best = output / "best_model"
    assert {"model.safetensors", "config.json", "item_vocabulary.json", "README.md", "modeling_hstu.py"} <= {
        path.name for path in best.iterdir()
    }
    assert "hr@10" in (best / "README.md").read_text()
    model = AutoModel.from_pretrained(best)
    vocabulary = ItemVocabulary.load(best)
    assert model.config.num_items == vocabulary.num_items
    history = torch.tensor([[1, 2, 3]])
    recommendations = model.recommend(
        input_ids=history, timestamps=torch.tensor([[10, 20, 30]]), target_timestamps=torch.tensor([40]), k=5
    )
    assert recommendations.item_ids.shape == (1, 5)
    assert not {1, 2, 3} & set(recommendations.item_ids[0].tolist())
    assert len(vocabulary.decode(recommendations.item_ids[0].tolist())) == 5


def test_resumed_run_ends_with_the_same_weights(tmp_path, tiny_dataset):
    run(tmp_path, tiny_dataset, "--num_epochs", "3", "--early_stopping_patience", "10", name="straight")
    run(tmp_path, tiny_dataset, "--num_epochs", "2", "--early_stopping_patience", "10", name="killed")
    resume = ("--num_epochs", "3", "--early_stopping_patience", "10", "--resume_from_checkpoint", "latest")
    run(tmp_path, tiny_dataset, *resume, name="killed")
    straight = load_file(tmp_path / "straight" / "checkpoints" / "epoch_0003" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "checkpoints" / "epoch_0003" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    history = json.loads((tmp_path / "killed" / "results.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2, 3]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, tiny_dataset):
    run(tmp_path, tiny_dataset, "--num_epochs", "1")
    with pytest.raises(ValueError, match="its model config differs: hidden_size: checkpoint 16 vs now 32"):
        run(tmp_path, tiny_dataset, "--num_epochs", "2", "--hidden_size", "32", "--resume_from_checkpoint", "latest")


def test_nan_loss_names_the_step_and_leaves_the_run_alone(tmp_path, tiny_dataset):
    with pytest.raises(FloatingPointError, match=r"The training loss is nan at step \d+ \(epoch 1\)"):
        run(tmp_path, tiny_dataset, "--num_epochs", "1", "--learning_rate", "1e30")
    assert not (tmp_path / "run" / "best_model").exists()


def test_bad_dataset_and_output_dir(tmp_path, tiny_dataset):
    with pytest.raises(FileNotFoundError, match="Dataset folder not found"):
        run(tmp_path, tmp_path / "missing" / "data")
    (tmp_path / "not_a_dataset").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a preprocessed dataset folder"):
        run(tmp_path, tmp_path / "not_a_dataset")
    run(tmp_path, tiny_dataset, "--num_epochs", "1")
    with pytest.raises(FileExistsError, match="already holds a run"):
        run(tmp_path, tiny_dataset, "--num_epochs", "1")
    with pytest.raises(ValueError, match="push_to_hub needs --hub_model_id"):
        run(tmp_path, tiny_dataset, "--push_to_hub", "true", name="other")


def test_every_shipped_config_file_parses_to_its_preset():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "scripts" / "configs").glob("*.yaml"))
    assert {path.stem for path in configs} == set(PRESETS)
    for path in configs:
        model_args, data_args, training_args = parse_training_arguments(["--config", str(path)])
        preset = PRESETS[path.stem]
        assert model_args.model_type == preset["model_type"] and model_args.hidden_size == preset["hidden_size"]
        assert training_args.num_epochs == preset["num_epochs"] and data_args.dataset == f"data/{preset['dataset']}"
