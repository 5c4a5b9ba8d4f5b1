"""Which HSTU attention backend runs: chosen per forward pass from the tensors' device, never from the machine.

The "GPU machine" tests simulate the machine where this went wrong: `torch.cuda.is_available()` patched to True while
every tensor is on the CPU (a user with a GPU in the box who evaluates on the CPU, or loads and then moves the model).
The whole user journey must work there and give exactly the plain CPU results.
"""

import json
import logging
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from recommender_testing import (
    TINY_TRAINING_ARGUMENTS,
    load_in_fresh_process,
    right_padded_batch,
    save_tiny_dataset,
    tiny_model,
)
from transformers import AutoModel

from hf_hstu import HSTUModel, Recommender
from hf_hstu.evaluation.ranking import evaluate_checkpoint
from hf_hstu.modeling import hstu_attention
from hf_hstu.modeling.hstu_attention import AUTO_ATTENTION, resolve_attention_backend
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.launch import check_process_launch
from hf_hstu.training.loop import train

triton_hstu_attention = pytest.importorskip(
    "hf_hstu.modeling.triton_hstu_attention", reason="the hstu_triton backend needs triton (pip install triton)"
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
INPUT_NAMES = ("input_ids", "attention_mask", "timestamps", "target_timestamps")


@pytest.fixture
def gpu_machine(monkeypatch):
    """This process believes a CUDA GPU is there; every tensor stays on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def no_interpreter(monkeypatch):
    """The kernels as on a user's machine: compiled for CUDA, not run by the Triton interpreter on CPU tensors."""
    monkeypatch.setattr(triton_hstu_attention, "INTERPRET", False)


@pytest.fixture
def backend_warnings(caplog):
    """The backend warnings logged from now on (each distinct one is logged once per process)."""
    logging.Logger.warning_once.cache_clear()
    caplog.set_level(logging.WARNING, logger=hstu_attention.logger.name)
    return lambda: [r.getMessage() for r in caplog.records if r.name == hstu_attention.logger.name]


def test_backend_follows_the_device(no_interpreter, backend_warnings):
    assert resolve_attention_backend(AUTO_ATTENTION, CPU) == resolve_attention_backend(None, CPU) == "eager"
    assert resolve_attention_backend(AUTO_ATTENTION, CUDA) == "hstu_triton"
    assert resolve_attention_backend(AUTO_ATTENTION, CUDA, attention_dropout=0.1) == "eager"  # kernels: no dropout
    assert resolve_attention_backend("eager", CUDA) == "eager"
    assert resolve_attention_backend("hstu_triton", CUDA) == "hstu_triton"
    assert backend_warnings() == []
    # requested by name where it cannot run: one warning that says why, and the eager reference
    assert resolve_attention_backend("hstu_triton", CPU) == "eager"
    assert resolve_attention_backend("hstu_triton", CPU) == "eager"
    (warning,) = backend_warnings()
    assert (
        "attn_implementation='hstu_triton' cannot run here" in warning and "CUDA tensors, these are on cpu" in warning
    )


def test_default_is_auto_whatever_the_machine(tmp_path, monkeypatch):
    tiny_model("hstu").save_pretrained(tmp_path)
    assert HSTUModel.from_pretrained(tmp_path).config._attn_implementation == AUTO_ATTENTION
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert HSTUModel.from_pretrained(tmp_path).config._attn_implementation == AUTO_ATTENTION
    loaded = HSTUModel.from_pretrained(tmp_path, attn_implementation="hstu_triton")
    assert loaded.config._attn_implementation == "hstu_triton"
    loaded.set_attn_implementation("eager")
    assert loaded.config._attn_implementation == "eager"
    assert "attn_implementation" not in (tmp_path / "config.json").read_text()  # a run-time setting, never saved


def test_triton_requested_on_cpu_tensors_runs_eager(tmp_path, gpu_machine, no_interpreter, backend_warnings):
    model = tiny_model("hstu").eval()
    model.save_pretrained(tmp_path)
    batch = {name: right_padded_batch()[name] for name in INPUT_NAMES}
    expected = model.recommend(**batch, k=5)
    loaded = HSTUModel.from_pretrained(tmp_path, attn_implementation="hstu_triton")
    recommended = loaded.recommend(**batch, k=5)
    assert torch.equal(recommended.item_ids, expected.item_ids)
    torch.testing.assert_close(recommended.scores, expected.scores, rtol=0, atol=0)
    assert len(backend_warnings()) == 1


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run trained on a plain CPU machine: its folder, best model and the plain-CPU reference results."""
    root = tmp_path_factory.mktemp("plain_cpu")
    dataset = save_tiny_dataset(root / "data")
    argv = [*TINY_TRAINING_ARGUMENTS, "--max_steps", "3", "--dataset", str(dataset), "--output_dir", str(root / "run")]
    result = train(*parse_training_arguments(argv))
    best_model = Path(result.best_model_dir)
    model = AutoModel.from_pretrained(best_model).eval()
    batch = {name: right_padded_batch(lengths=(5, 3, 8, 1))[name] for name in INPUT_NAMES}
    batch["input_ids"] = batch["input_ids"].clamp(max=model.config.num_items)
    recommender = Recommender.from_pretrained(best_model)
    raw_history = recommender.vocabulary.decode(batch["input_ids"][0, :5].tolist())
    return {
        "root": root,
        "argv": argv,
        "dataset": dataset,
        "best_model": best_model,
        "result": result,
        "batch": batch,
        "outputs": model(**batch),
        "recommended": model.recommend(**batch, k=5),
        "raw_history": raw_history,
        "raw_recommended": recommender.recommend([raw_history], [list(range(1, 6))], request_times=[10], k=5),
        "metrics": evaluate_checkpoint(str(best_model), str(dataset), "test", k_values=(5, 10)),
    }


def test_gpu_machine_runs_the_user_journey_on_the_cpu(trained_run, gpu_machine, no_interpreter, tmp_path, capsys):
    """from_pretrained, forward, recommend, Recommender and scripts/evaluate.py: all as on the plain CPU."""
    model = AutoModel.from_pretrained(trained_run["best_model"]).eval()
    outputs = model(**trained_run["batch"])
    torch.testing.assert_close(outputs.user_embeddings, trained_run["outputs"].user_embeddings, rtol=0, atol=0)
    recommended = model.recommend(**trained_run["batch"], k=5)
    assert torch.equal(recommended.item_ids, trained_run["recommended"].item_ids)

    recommender = Recommender.from_pretrained(trained_run["best_model"])
    raw = recommender.recommend([trained_run["raw_history"]], [list(range(1, 6))], request_times=[10], k=5)
    assert raw == trained_run["raw_recommended"]

    argv = ["evaluate.py", "--model", str(trained_run["best_model"]), "--dataset", str(trained_run["dataset"])]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [*argv, "--top_k", "5,10"])
        runpy.run_path(str(REPO_ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    printed = json.loads(capsys.readouterr().out)
    assert {name: printed[name] for name in trained_run["metrics"]} == trained_run["metrics"]


def test_gpu_machine_loads_remote_code_on_the_cpu(trained_run, tmp_path):
    """The checkpoint's own code (trust_remote_code, hf_hstu and triton not importable) in a process that believes a
    GPU is there."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        "HF_HSTU_TEST_SIMULATE_CUDA": "1",
    }
    batch = trained_run["batch"]
    remote = load_in_fresh_process(tmp_path, str(trained_run["best_model"]), "hidden", batch, env)
    torch.testing.assert_close(
        torch.tensor(remote["user_embeddings"]), trained_run["outputs"].user_embeddings, rtol=0, atol=1e-6
    )
    assert remote["item_ids"] == trained_run["recommended"].item_ids.tolist()


def test_gpu_machine_trains_on_the_cpu_like_a_plain_machine(trained_run, gpu_machine, no_interpreter, monkeypatch):
    """A few training steps (Accelerate on the CPU, as `accelerate launch --cpu` sets it) end where the plain CPU run
    ended: same validation history and test metrics."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    argv = list(trained_run["argv"])
    argv[argv.index("--output_dir") + 1] = str(trained_run["root"] / "gpu_machine_run")
    result = train(*parse_training_arguments(argv))
    assert result.history == trained_run["result"].history
    assert result.test_metrics == trained_run["result"].test_metrics


@pytest.mark.parametrize(
    ("env", "num_processes", "message"),
    [
        # accelerate launch --cpu --num_processes 2: the simple launcher starts one process
        ({"ACCELERATE_USE_CPU": "True", "MASTER_PORT": "29500", "MASTER_ADDR": "127.0.0.1"}, 1, "starts a single"),
        # accelerate launch --multi_gpu --num_processes 2 on a machine without CUDA, ACCELERATE_USE_CPU unset
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"}, 1, "2 processes were launched but this one runs"),
    ],
)
def test_launches_that_would_not_cooperate_fail_first(env, num_processes, message):
    with pytest.raises(ValueError, match=message) as error:
        check_process_launch(env, num_processes)
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N" in str(error.value)


@pytest.mark.parametrize(
    "env",
    [
        {},  # python scripts/train.py
        {"ACCELERATE_USE_CPU": "False"},  # accelerate launch with one process
        {"ACCELERATE_USE_CPU": "1", "WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "29500"},  # the documented way
        {"ACCELERATE_USE_CPU": "True", "OMPI_COMM_WORLD_SIZE": "2", "MASTER_PORT": "29500"},  # mpirun
    ],
)
def test_launches_that_cooperate_pass(env):
    world_size = int(env.get("WORLD_SIZE", env.get("OMPI_COMM_WORLD_SIZE", "1")))
    check_process_launch(env, world_size)


def test_cpu_launch_with_several_processes_fails_before_any_work(tmp_path):
    """`accelerate launch --cpu --num_processes 2 scripts/train.py` as a user types it: a clear error, no output."""
    import subprocess

    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [str(REPO_ROOT / "scripts" / "train.py"), "--output_dir", str(output_dir), "--report_to", "none"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "starts a single process" in result.stderr
    assert not output_dir.exists()
