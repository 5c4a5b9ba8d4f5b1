"""The training loop as a user runs it: arguments and presets, train -> best model -> reload -> recommend, exact
resumption, and the errors for bad input."""

import json
import logging
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset
from safetensors.torch import load_file
from transformers import AutoModel

from hf_hstu.data import ItemVocabulary
from hf_hstu.training import loop
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
    # The test split gets the beyond-accuracy metrics (popularity from the train split); validation only accuracy.
    assert {"coverage@10", "arp@10", "novelty@10", "serendipity@10"} <= set(result.test_metrics)
    assert result.test_metrics["arp@10"] > 1.0 and result.test_metrics["novelty@10"] > 0.0
    assert not any(key.startswith("validation/arp") for record in saved["history"] for key in record)
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
    # 48 training sequences in batches of 16: 3 steps per epoch
    straight = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint-9" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "checkpoints" / "checkpoint-9" / "model.safetensors")
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


def test_resume_skips_a_checkpoint_killed_while_saving(tmp_path, tiny_dataset, caplog):
    run(tmp_path, tiny_dataset, "--num_epochs", "2", "--early_stopping_patience", "10", "--save_total_limit", "5")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(folder.name for folder in checkpoints.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    # killed while writing epoch 3: the staging folder of this package, and a half-written folder that has the final
    # name but not the training state that is written last
    shutil.copytree(checkpoints / "checkpoint-6", checkpoints / "checkpoint-9.tmp")
    shutil.copytree(checkpoints / "checkpoint-6", checkpoints / "checkpoint-12")
    (checkpoints / "checkpoint-12" / "training_state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="hf_hstu.training.loop"):
        result = run(
            tmp_path,
            tiny_dataset,
            *("--num_epochs", "3", "--early_stopping_patience", "10", "--resume_from_checkpoint", "latest"),
        )
    assert "Resuming from" in caplog.text and "checkpoint-6;" in caplog.text and "checkpoint-12" in caplog.text
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert (checkpoints / "checkpoint-9" / "training_state.json").is_file()
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        run(tmp_path, tiny_dataset, "--resume_from_checkpoint", str(checkpoints / "checkpoint-12"))


def test_overwrite_starts_clean_and_keeps_the_old_run_until_the_new_one_saves(tmp_path, tiny_dataset, monkeypatch):
    run(tmp_path, tiny_dataset, "--num_epochs", "3", "--early_stopping_patience", "10", "--save_total_limit", "5")
    output_dir = tmp_path / "run"

    def fail_before_the_first_checkpoint(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(loop, "_save_checkpoint", fail_before_the_first_checkpoint)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, tiny_dataset, "--num_epochs", "1", "--overwrite_output_dir", "true")
    (replaced,) = tmp_path.glob("run.replaced-*")  # the old run, whole, beside the failed new one
    assert {folder.name for folder in (replaced / "checkpoints").iterdir()} >= {"checkpoint-9"}
    monkeypatch.undo()

    result = run(tmp_path, tiny_dataset, "--num_epochs", "1", "--overwrite_output_dir", "true")
    assert sorted(folder.name for folder in (output_dir / "checkpoints").iterdir()) == ["checkpoint-3"]
    assert not list(tmp_path.glob("run.replaced-*"))  # removed once the new run had saved
    # a later resume continues the new run, not the old one
    resumed = run(tmp_path, tiny_dataset, "--num_epochs", "2", "--resume_from_checkpoint", "latest")
    assert [record["epoch"] for record in resumed.history] == [1, 2]
    assert resumed.history[0] == result.history[0]


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path, tiny_dataset):
    run(tmp_path, tiny_dataset, "--num_epochs", "1")
    other = save_tiny_dataset(tmp_path / "other", num_users=40)
    with pytest.raises(ValueError, match="it was trained on other data: .*train_sequences: checkpoint 48 vs now 40"):
        argv = [*TINY, "--dataset", str(other), "--output_dir", str(tmp_path / "run")]
        train(*parse_training_arguments([*argv, "--num_epochs", "2", "--resume_from_checkpoint", "latest"]))


def test_resumed_run_reports_its_total_training_time(tmp_path, tiny_dataset, monkeypatch):
    clock = iter(range(0, 10_000, 10))  # the loop's clock: each reading 10 s after the previous one
    loop_time = SimpleNamespace(
        perf_counter=lambda: float(next(clock)), monotonic=time.monotonic, strftime=time.strftime
    )
    monkeypatch.setattr(loop, "time", loop_time)
    first = run(tmp_path, tiny_dataset, "--num_epochs", "1")  # readings: start 0, checkpoint 10, end 20
    assert first.train_seconds == 20.0
    saved = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-3" / "training_state.json").read_text())
    assert saved["train_seconds"] == 10.0  # the training time up to that checkpoint
    resumed = run(tmp_path, tiny_dataset, "--num_epochs", "2", "--resume_from_checkpoint", "latest")
    assert resumed.train_seconds == 10.0 + 20.0  # before the resume, then start 30 to end 50 of this session


def test_mixed_precision_follows_the_launcher_unless_given(tmp_path, tiny_dataset, monkeypatch):
    """`accelerate launch --mixed_precision bf16` sets ACCELERATE_MIXED_PRECISION; the flag's default must not
    override it (it did: the run trained in fp32)."""
    seen = []

    class RecordingAccelerator(loop.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.mixed_precision)

    monkeypatch.setattr(loop, "Accelerator", RecordingAccelerator)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    try:
        for name, flags in (("launcher", ()), ("flag", ("--mixed_precision", "no"))):
            AcceleratorState._reset_state(reset_partial_state=True)  # one precision per process, as in a launch
            run(tmp_path, tiny_dataset, "--max_steps", "1", *flags, name=name)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert seen == ["bf16", "no"]


def test_summary_tables_accuracy_and_lists_the_test_splits_beyond_accuracy_metrics():
    result = loop.TrainingResult(
        output_dir="out",
        best_model_dir="out/best_model",
        best_epoch=2,
        validation_metrics={"hr@10": 0.5, "ndcg@10": 0.25},
        test_metrics={"hr@10": 0.4, "ndcg@10": 0.2, "coverage@10": 0.125, "arp@10": 31.5},
        train_seconds=12.0,
        num_processes=1,
        history=[],
    )
    lines = loop.format_summary(result, "ndcg@10").splitlines()
    assert lines[1].split() == ["split", "hr@10", "ndcg@10"]
    assert lines[2].split() == ["validation", "0.5000", "0.2500"]
    assert lines[3].split() == ["test", "0.4000", "0.2000"]
    assert lines[4] == "test beyond accuracy: coverage@10=0.1250, arp@10=31.5000"
