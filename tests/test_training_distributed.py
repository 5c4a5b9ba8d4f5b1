"""`accelerate launch` with 2 processes (gloo DDP on CPU) trains exactly like one process with the same global batch:
both ranks end with the same parameters, equal to the single-process ones, and the sharded evaluation gives the same
metrics."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from launch_testing import REPO_ROOT, free_port, run_successfully
from recommender_testing import TINY_TRAINING_ARGUMENTS, save_tiny_dataset

TRAIN_ARGUMENTS = ["--num_epochs", "1", "--max_steps", "4", "--dropout", "0.0", *TINY_TRAINING_ARGUMENTS]
TRAIN_ARGUMENTS[TRAIN_ARGUMENTS.index("--batch_size") + 1] = "8"  # 4 steps of a small global batch
TRAIN_ARGUMENTS[TRAIN_ARGUMENTS.index("--eval_batch_size") + 1] = "16"  # uneven last evaluation batch

# Runs scripts/train.py with an Accelerator that remembers the prepared model, then saves what this rank started
# and ended with to DUMP_DIR/rank<i>.pt (the package only saves from the main process).
LAUNCHER = textwrap.dedent(
    """
    import runpy, sys
    from pathlib import Path

    import torch
    from accelerate import Accelerator

    import hf_hstu.training.loop

    recorded = {}

    class RecordingAccelerator(Accelerator):
        def prepare(self, *objects, **kwargs):
            prepared = super().prepare(*objects, **kwargs)
            for obj in prepared if isinstance(prepared, tuple) else (prepared,):
                if isinstance(obj, torch.nn.Module):
                    recorded["model"] = self.unwrap_model(obj)
                    recorded["initial"] = {k: v.detach().clone() for k, v in recorded["model"].state_dict().items()}
                    recorded["rank"] = self.process_index
            return prepared

    hf_hstu.training.loop.Accelerator = RecordingAccelerator
    dump_dir, script, *arguments = sys.argv[1:]
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")
    final = {k: v.detach().clone() for k, v in recorded["model"].state_dict().items()}
    torch.save({"initial": recorded["initial"], "final": final}, Path(dump_dir) / f"rank{recorded['rank']}.pt")
    """
)


def _train(tmp_path: Path, dataset: Path, name: str, num_processes: int) -> tuple[list[dict], dict]:
    """Train on `num_processes` processes; returns each rank's {"initial", "final"} state dicts and results.json."""
    dump_dir = tmp_path / f"{name}_parameters"
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
    ]
    if num_processes == 1:
        command = [sys.executable, *arguments]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            *arguments,
        ]
    run_successfully(command, tmp_path)
    parameters = [torch.load(dump_dir / f"rank{rank}.pt") for rank in range(num_processes)]
    return parameters, json.loads((tmp_path / name / "results.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    dataset = save_tiny_dataset(tmp_path / "tiny", num_users=61)
    (tmp_path / "launcher.py").write_text(LAUNCHER)

    (single,), single_results = _train(tmp_path, dataset, "single", num_processes=1)
    (rank0, rank1), ddp_results = _train(tmp_path, dataset, "ddp", num_processes=2)

    assert ddp_results["num_processes"] == 2 and single_results["num_processes"] == 1
    assert single["final"].keys() == rank0["final"].keys() == rank1["final"].keys()
    for name, expected in single["final"].items():
        assert torch.equal(rank0["initial"][name], single["initial"][name]), f"{name}: different initialisation"
        # Both ranks apply the same averaged gradient: bit-identical parameters.
        assert torch.equal(rank1["final"][name], rank0["final"][name]), f"{name}: the ranks diverged"
        # The same global batches, negatives and loss weighting: only the summation order differs.
        difference = (rank0["final"][name] - expected).abs().max().item()
        assert difference <= 1e-5, f"{name}: 2 processes end {difference} away from 1 process"
        # The 4 steps moved every tensor far beyond that tolerance, so the comparison above has teeth.
        assert (expected - single["initial"][name]).abs().max() > 1e-3, f"{name}: barely trained"
    for key in ("best_epoch", "validation_metrics", "test_metrics", "history"):
        assert ddp_results[key] == single_results[key], key
