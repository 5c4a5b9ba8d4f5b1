"""Model cards for finished runs, pushing a checkpoint folder (weights, config with auto_map, model code, item
vocabulary and card) to the Hub in one commit, and pushing a preprocessed dataset folder with its dataset card."""

import json
import logging
import platform
import re
from pathlib import Path

import torch
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, ModelCard
from huggingface_hub import constants as hub_constants

from ..data import METADATA_FILE, ItemVocabulary, SequenceData, UserVocabulary, load_sequences
from ..data.item_features import load_item_features
from .dataset_card import build_dataset_card, restricted_source
from .model_card import build_model_card

logger = logging.getLogger(__name__)


def describe_hardware(device: torch.device, num_processes: int = 1) -> str:
    """What the run ran on (the device it trained on, not what else the machine has), for the model card."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = (
            f"{device.type.upper()} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    return f"{num_processes} x {name}" if num_processes > 1 else name


# config.json keys that describe the machine a checkpoint was saved on (transformers 4 wrote the folder's path).
_MACHINE_LOCAL_CONFIG_KEYS = ("_name_or_path", "name_or_path", "_commit_hash")


def _dummy_labels(config: dict) -> bool:
    """Whether id2label / label2id are absent or transformers' placeholders ({0: "LABEL_0", ...})."""
    id2label = {str(key): value for key, value in (config.get("id2label") or {}).items()}
    label2id = {key: str(value) for key, value in (config.get("label2id") or {}).items()}
    placeholder = {str(index): f"LABEL_{index}" for index in range(len(id2label))}
    return id2label == placeholder and label2id in ({}, {value: key for key, value in placeholder.items()})


def portable_config(config: dict) -> dict:
    """A config dict without what is particular to this machine or meaningless for a recommender: the local
    `_name_or_path`, and placeholder id2label / label2id."""
    cleaned = {key: value for key, value in config.items() if key not in _MACHINE_LOCAL_CONFIG_KEYS}
    if _dummy_labels(cleaned):
        cleaned = {key: value for key, value in cleaned.items() if key not in ("id2label", "label2id")}
    return cleaned


def card_for_repository(card_text: str, repo_id: str) -> str:
    """A model card's text with its usage code loading `repo_id` (a card written before the push names a local
    folder, a placeholder or another repository there)."""
    return re.sub(r'(\.from_pretrained\()"[^"\n]*"', lambda match: f'{match.group(1)}"{repo_id}"', card_text)


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
    dataset_id: str | None = None,
) -> ModelCard:
    """Write README.md (the model card) into a saved checkpoint folder, from its config.json and the measured
    metrics. `command` should name no path of this machine (see `hf_hstu.training.loop.reproducing_command`);
    `dataset_id` (default `dataset_name`) is the dataset of the card's metadata, e.g. a Hub dataset id; `device`
    (what the run trained on) is stated as the card's hardware when given."""
    checkpoint_dir = Path(checkpoint_dir)
    config = portable_config(json.loads((checkpoint_dir / "config.json").read_text(encoding="utf-8")))
    extra = {"protocol": protocol} if protocol else {}
    card = build_model_card(
        config,
        dataset_name=dataset_name,
        dataset_id=dataset_id or dataset_name,
        command=command or "# the training command was not recorded",
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
    """Create `repo_id` if needed and upload the whole checkpoint folder in one commit; returns the commit URL.

    What is uploaded names nothing of this machine: config.json goes without a local `_name_or_path` or placeholder
    labels, and the card's usage code loads `repo_id`. The local files are left as they are."""
    checkpoint_dir = Path(checkpoint_dir)
    missing = [name for name in ("config.json", "model.safetensors") if not (checkpoint_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{checkpoint_dir} is not a saved checkpoint: missing {', '.join(missing)}.")
    operations = []
    for path in sorted(checkpoint_dir.rglob("*")):
        name = path.relative_to(checkpoint_dir).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in name.split("/")):
            continue
        content: Path | bytes = path
        if name == "config.json":
            config = json.loads(path.read_text(encoding="utf-8"))
            portable = portable_config(config)
            if portable != config:
                content = (json.dumps(portable, indent=2, sort_keys=True) + "\n").encode()
        elif name == "README.md":
            content = card_for_repository(path.read_text(encoding="utf-8"), repo_id).encode()
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    commit = api.create_commit(repo_id, operations, commit_message=commit_message)
    return commit.commit_url


def push_dataset(dataset_dir: str | Path, repo_id: str, private: bool = False, i_have_the_rights: bool = False) -> str:
    """Push a preprocessed dataset folder (`scripts/preprocess.py --output`) to the Hub dataset repository
    `repo_id`: the splits as parquet, the vocabularies, preprocessing.json and a dataset card (source and licence
    note, statistics, preprocessing command). Returns the repository's URL.

    Data of a source that may not be redistributed (MovieLens, Amazon reviews) are pushed only with
    `i_have_the_rights=True`: whoever pushes is responsible for holding the rights to publish them.
    """
    folder = Path(dataset_dir)
    if not (folder / METADATA_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} is not a preprocessed dataset folder (no {METADATA_FILE} in it). Create one with "
            f"`python scripts/preprocess.py --dataset NAME --output {folder}`."
        )
    metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    restricted = restricted_source(metadata["dataset"])
    if restricted is not None:
        source, note = restricted
        if not i_have_the_rights:
            raise PermissionError(
                f"{folder} holds {source} data ({metadata['dataset']}). {note} Nothing was pushed: pass "
                "--i_have_the_rights (i_have_the_rights=True) only if you hold the permission to publish them."
            )
        logger.warning(
            "Pushing %s data (%s) to %s: you stated that you hold the rights to publish them. %s",
            source,
            metadata["dataset"],
            repo_id,
            note,
        )
    data = SequenceData(
        load_sequences(folder),
        ItemVocabulary.load(folder),
        UserVocabulary.load(folder),
        metadata,
        item_features=load_item_features(folder),  # items.parquet beside the splits, when the folder has one
    )
    data.push_to_hub(repo_id, private=private)
    existing = DatasetCard.load(repo_id, repo_type="dataset").data  # datasets' dataset_info and configs
    build_dataset_card(metadata, repo_id, existing).push_to_hub(
        repo_id, repo_type="dataset", commit_message="Add the dataset card"
    )
    return f"{hub_constants.ENDPOINT}/datasets/{repo_id}"
