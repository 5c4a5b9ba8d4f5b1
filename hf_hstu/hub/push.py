"""Model cards for finished runs and pushing a checkpoint folder (weights, config with auto_map, model code, item
vocabulary and card) to the Hub in one commit."""

import platform
import shlex
import sys
from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard
from transformers import AutoConfig

from .model_card import build_model_card


def describe_hardware(device: torch.device, num_processes: int = 1) -> str:
    """What the run ran on (the device it trained on, not what else the machine has), for the model card."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = (
            f"{device.type.upper()} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    return f"{num_processes} x {name}" if num_processes > 1 else name


def write_run_model_card(
    checkpoint_dir: str | Path,
    *,
    dataset_name: str,
    metrics: dict | None,
    training_seconds: float | None,
    num_processes: int,
    training_config: dict,
    device: torch.device | None = None,
    protocol: str | None = None,
    model_id: str | None = None,
    command: str | None = None,
) -> ModelCard:
    """Write README.md (the model card) into a saved checkpoint folder, from its config and the measured metrics
    (`device`: what the run trained on, stated as the card's hardware when given)."""
    checkpoint_dir = Path(checkpoint_dir)
    config = AutoConfig.from_pretrained(checkpoint_dir, trust_remote_code=True).to_dict()
    extra = {"protocol": protocol} if protocol else {}
    card = build_model_card(
        config,
        dataset_name=dataset_name,
        dataset_id=dataset_name,
        command=command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        metrics=metrics,
        training_time_s=training_seconds,
        hardware=None if device is None else describe_hardware(device, num_processes),
        model_id=model_id,
        training_config=training_config,
        **extra,
    )
    card.save(checkpoint_dir / "README.md")
    return card


def push_checkpoint(
    checkpoint_dir: str | Path, repo_id: str, private: bool = False, commit_message: str = "Upload hf_hstu checkpoint"
) -> str:
    """Create `repo_id` if needed and upload the whole checkpoint folder in one commit; returns the commit URL."""
    checkpoint_dir = Path(checkpoint_dir)
    missing = [name for name in ("config.json", "model.safetensors") if not (checkpoint_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{checkpoint_dir} is not a saved checkpoint: missing {', '.join(missing)}.")
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    commit = api.upload_folder(folder_path=str(checkpoint_dir), repo_id=repo_id, commit_message=commit_message)
    return commit.commit_url
