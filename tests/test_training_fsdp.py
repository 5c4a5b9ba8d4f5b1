"""FSDP2 through Accelerate (`scripts/configs/accelerate/fsdp.yaml`): 2 processes shard the item table and the decoder
layers, train like one process, save a normal full checkpoint, and resume from their sharded training state.

accelerate 1.16 sets up DDP instead of FSDP for a CPU launch (ACCELERATE_USE_CPU=1), although torch's FSDP2 runs on
CPU with gloo; the launcher below therefore puts the accelerate state where a GPU launch of the same config puts it
(FSDP, with the plugin that `accelerate launch --config_file fsdp.yaml` configured through the environment). All the
rest (sharding, gathering, saving, checkpoints) is accelerate's and the package's own code path.
"""

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from launch_testing import REPO_ROOT, free_port, run_successfully
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset

from hf_hstu.modeling.modeling_hstu import HSTUModel
from hf_hstu.training.launch import check_process_launch

FSDP_CONFIG = REPO_ROOT / "scripts" / "configs" / "accelerate" / "fsdp.yaml"
TRAIN_ARGUMENTS = ["--num_epochs", "1", "--max_steps", "4", "--dropout", "0.0", *TINY_TRAINING_ARGUMENTS]
TRAIN_ARGUMENTS[TRAIN_ARGUMENTS.index("--batch_size") + 1] = "8"  # 4 steps of a small global batch
TRAIN_ARGUMENTS += ["--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2"]
NUM_ITEMS = 40  # save_tiny_dataset's catalogue: an item table of 41 rows (row 0 = padding)

# Runs scripts/train.py and writes DUMP_DIR/rank<i>.json (what this rank held of the item table at each training step)
# and, from the main process, DUMP_DIR/final.pt (the trained model's full tensors, gathered before the run finishes).
LAUNCHER = textwrap.dedent(
    """
    import json, os, runpy, sys
    from pathlib import Path

    import torch
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    import hf_hstu.training.loop as loop

    class CpuFsdpAccelerator(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if os.environ.get("ACCELERATE_USE_FSDP") == "true":
                PartialState().distributed_type = DistributedType.FSDP
                self.state.distributed_type = DistributedType.FSDP
                self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the config's environment

    shards = []
    original_loss, original_finish = loop.TrainingObjective.loss, loop._finish

    def recording_loss(self, model, batch, accelerator=None):
        table = model.get_input_embeddings().weight  # between steps: this process's shard
        layer = next(model.layers.parameters())
        local = lambda t: list((t.to_local() if isinstance(t, DTensor) else t).shape)
        shards.append({"item_table": local(table), "layer_parameter": local(layer), "layer_shape": list(layer.shape)})
        return original_loss(self, model, batch, accelerator)

    def recording_finish(run, train_seconds):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = run.accelerator.unwrap_model(run.model)
        full = get_model_state_dict(model, options=options) if run.accelerator.is_fsdp2 else model.state_dict()
        if run.accelerator.is_main_process:
            torch.save({k: v.detach().cpu().clone() for k, v in full.items()}, dump_dir / "final.pt")
        (dump_dir / f"rank{run.accelerator.process_index}.json").write_text(json.dumps(shards))
        return original_finish(run, train_seconds)

    loop.Accelerator = CpuFsdpAccelerator
    loop.TrainingObjective.loss = recording_loss
    loop._finish = recording_finish
    dump_dir, script, *arguments = sys.argv[1:]
    dump_dir = Path(dump_dir)
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")
    """
)


def _train(tmp_path: Path, dataset: Path, name: str, fsdp: bool, *extra: str) -> dict:
    """Train (2 FSDP processes or 1 plain process); returns the recorded shards, final tensors and results.json."""
    dump_dir = tmp_path / f"{name}_dump"
    dump_dir.mkdir()
    arguments = [
        str(tmp_path / "launcher.py"),
        str(dump_dir),
        str(REPO_ROOT / "scripts" / "train.py"),
        "--dataset",
        str(dataset),
        "--output_dir",
        str(tmp_path / name),
        *TRAIN_ARGUMENTS,
        *extra,
    ]
    if not fsdp:
        command = [sys.executable, *arguments]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(FSDP_CONFIG),
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            *arguments,
        ]
    run_successfully(command, tmp_path)
    return {
        "shards": [json.loads((dump_dir / f"rank{rank}.json").read_text()) for rank in range(2 if fsdp else 1)],
        "final": torch.load(dump_dir / "final.pt"),
        "results": json.loads((tmp_path / name / "results.json").read_text()),
    }


@pytest.mark.slow
def test_two_process_fsdp_shards_trains_like_one_process_saves_and_resumes(tmp_path):
    dataset = save_tiny_dataset(tmp_path / "tiny", num_users=61)
    (tmp_path / "launcher.py").write_text(LAUNCHER)

    single = _train(tmp_path, dataset, "single", fsdp=False)
    fsdp = _train(tmp_path, dataset, "fsdp", fsdp=True)

    # (a) During training each process holds only its rows of the item table (41 rows: 21 + 20) and its part of
    # each layer parameter.
    for rank, shards in enumerate(fsdp["shards"]):
        assert len(shards) == 4
        for shard in shards:
            assert shard["item_table"] == [21 if rank == 0 else 20, 16], shard
            rows = shard["layer_shape"][0]
            assert shard["layer_parameter"][0] == ((rows + 1) // 2 if rank == 0 else rows // 2), shard
    assert single["shards"][0][0]["item_table"] == [NUM_ITEMS + 1, 16]

    # (c) The same global batches, negatives and loss weighting as one process: FSDP's reduce-scatter averages the
    # two processes' gradients, so only the summation order differs (measured: 1.5e-8 after 4 AdamW steps of lr 1e-3,
    # which move the weights by ~1e-3).
    assert fsdp["final"].keys() == single["final"].keys()
    for name, expected in single["final"].items():
        difference = (fsdp["final"][name] - expected).abs().max().item()
        assert difference <= 1e-6, f"{name}: FSDP ends {difference} away from 1 process"
    for key in ("best_step", "history"):
        assert fsdp["results"][key] == single["results"][key], key
    assert fsdp["results"]["num_processes"] == 2
    for a, b in zip(fsdp["results"]["test_metrics"].values(), single["results"]["test_metrics"].values(), strict=True):
        assert a == pytest.approx(b, abs=1e-6)

    # (b) best_model/ is a normal full checkpoint: its own class in auto_map, and from_pretrained loads it with the
    # tensors and shapes of the single-process one.
    config = json.loads((tmp_path / "fsdp" / "best_model" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_hstu.HSTUModel"
    loaded = HSTUModel.from_pretrained(tmp_path / "fsdp" / "best_model").state_dict()
    reference = HSTUModel.from_pretrained(tmp_path / "single" / "best_model").state_dict()
    assert loaded.keys() == reference.keys()
    for name, tensor in reference.items():
        assert loaded[name].shape == tensor.shape, name
        assert (loaded[name] - tensor).abs().max() <= 1e-6, name
    # The checkpoints hold the sharded state (torch.distributed.checkpoint folders), not a full model file.
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and not (checkpoint / "model.safetensors").exists()

    # (d) Resuming under FSDP from the step-2 checkpoint ends exactly where the uninterrupted run did (the sharded
    # weights and AdamW states, the schedule, RNG and negatives' generator are restored): the run's folder as a
    # run stopped during step 3 leaves it (its newest checkpoint is step 2's), continued with "latest".
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "checkpoint-4")
    (tmp_path / "resumed" / "results.json").unlink()
    resumed = _train(tmp_path, dataset, "resumed", True, "--resume_from_checkpoint", "latest")
    assert all(len(shards) == 2 for shards in resumed["shards"])  # trained only steps 3 and 4
    for name, expected in fsdp["final"].items():
        assert torch.equal(resumed["final"][name], expected), f"{name}: the resumed run ends elsewhere"
    assert resumed["results"]["history"] == fsdp["results"]["history"]


def test_fsdp_config_shards_everything_with_fsdp2():
    """The config that the README and the test above launch: FSDP2, full sharding of the decoder layers by the
    model's `_no_split_modules`, and sharded checkpoints."""
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    assert config["distributed_type"] == "FSDP"
    fsdp = config["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # taken from the model's _no_split_modules
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert HSTUModel._no_split_modules == ["HSTUDecoderLayer"]


def test_fsdp_launch_that_sets_up_ddp_is_refused():
    env = {"ACCELERATE_USE_FSDP": "true", "ACCELERATE_USE_CPU": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}
    with pytest.raises(ValueError, match="asked for FSDP .* set up DDP instead"):
        check_process_launch(env, 2, fsdp=False)
    check_process_launch(env, 2, fsdp=True)
    check_process_launch({"WORLD_SIZE": "2", "MASTER_PORT": "29500"}, 2)  # plain DDP
