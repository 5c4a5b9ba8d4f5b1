"""The training loop's data: a preprocessed dataset folder, or a dataset built in memory by name."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, IterableDataset
from datasets.distributed import split_dataset_by_node
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from ..data import (
    METADATA_FILE,
    ItemVocabulary,
    PreprocessingConfig,
    SequenceCollator,
    load_sequences,
    preprocess,
)
from ..data.item_features import ITEMS_PARQUET, ItemFeatureTable, ItemTableConfig, load_item_features
from ..evaluation.beyond_accuracy import ItemPopularity
from ..hub.model_card import LEAVE_ONE_OUT_PROTOCOL, dataset_display_name
from .arguments import DataArguments

PROTOCOL_DESCRIPTIONS = {
    "leave_one_out": LEAVE_ONE_OUT_PROTOCOL,
    "paper": (
        "the HSTU paper's protocol: each user's last event is the test target, everything before it trains; no "
        "validation split (the last epoch's model is evaluated); full-corpus ranking with history items excluded."
    ),
    "temporal": (
        "global temporal split: events after a cut-off time are held out; each user's first held-out event is the "
        "target and everything before the cut-off the history; full-corpus ranking with history items excluded."
    ),
}


@dataclass
class TrainingData:
    """Splits, vocabulary and collator of one dataset, with how it was made."""

    name: str
    splits: DatasetDict
    vocabulary: ItemVocabulary
    collator: SequenceCollator  # evaluation: whole histories (the loop builds the training one from the config)
    metadata: dict
    reference: str = ""  # how a command names the dataset: its Hub id, its name, or data/<name> for a local folder
    item_features: ItemFeatureTable | None = None  # with DataArguments.item_features

    def item_popularity(self) -> ItemPopularity:
        """Training popularity of each item (the train split's events and users), for ARP, novelty, serendipity."""
        train_item_ids = self.splits["train"].with_format("arrow")["item_ids"]  # no Python list per user
        return ItemPopularity.from_sequences(train_item_ids, self.vocabulary.num_items)

    @property
    def protocol_text(self) -> str:
        return PROTOCOL_DESCRIPTIONS.get(self.metadata.get("split"), str(self.metadata.get("split")))


# A Hub dataset repository id: "owner/name", neither an absolute nor an explicitly relative path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_training_data(data_args: DataArguments, max_seq_len: int) -> TrainingData:
    """Load `data_args.dataset`: a folder written by `scripts/preprocess.py`, a Hub dataset repository pushed by
    `scripts/push_dataset.py` (or `preprocess.py --push-to-hub`), or else a dataset name that is built in memory
    (from `data_args.raw_dir` or the official download)."""
    path = Path(data_args.dataset).expanduser()
    reference = data_args.dataset
    if path.exists():
        if not (path / METADATA_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a preprocessed dataset folder (no {METADATA_FILE} in it). Create one with "
                f"`python scripts/preprocess.py --dataset NAME --output {path}`."
            )
        splits = load_sequences(path)
        vocabulary = ItemVocabulary.load(path)
        metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        reference = f"data/{metadata.get('dataset', path.name)}"
        items = load_item_features(path) if data_args.item_features else None
    elif _HUB_ID.fullmatch(data_args.dataset):
        splits = load_sequences(data_args.dataset)  # FileNotFoundError naming it if it is not on the Hub either
        vocabulary = ItemVocabulary.load(
            hf_hub_download(data_args.dataset, ItemVocabulary.file_name, repo_type="dataset")
        )
        metadata_file = hf_hub_download(data_args.dataset, METADATA_FILE, repo_type="dataset")
        metadata = json.loads(Path(metadata_file).read_text(encoding="utf-8"))
        items = _hub_item_features(data_args.dataset) if data_args.item_features else None
    else:
        if any(separator in data_args.dataset for separator in ("/", "\\")):
            raise FileNotFoundError(f"Dataset folder not found: {path}")
        built = preprocess(
            data_args.dataset,
            config=PreprocessingConfig(split=data_args.protocol),
            raw_dir=data_args.raw_dir,
            item_table=ItemTableConfig(item_table="genres") if data_args.item_features else None,
        )
        splits, vocabulary, metadata = built.dataset, built.item_vocabulary, built.metadata
        items = built.item_features
    if "train" not in splits or "test" not in splits:
        raise ValueError(f"{data_args.dataset}: expected train and test splits, found {sorted(splits)}.")
    if data_args.item_features and items is None:
        raise FileNotFoundError(
            f"{data_args.dataset} has no item table (items/ or {ITEMS_PARQUET}) for item_features: preprocess it "
            "with `python scripts/preprocess.py ... --item_table genres` (MovieLens) or `--item_table FILE`."
        )
    if items is not None and len(items) != vocabulary.num_items:
        raise ValueError(
            f"{data_args.dataset}: the item table has {len(items)} rows but the vocabulary {vocabulary.num_items} items."
        )
    return TrainingData(
        name=dataset_display_name(metadata.get("dataset", data_args.dataset), metadata),
        splits=splits,
        vocabulary=vocabulary,
        collator=SequenceCollator(max_seq_len=max_seq_len),
        metadata=metadata,
        reference=reference,
        item_features=ItemFeatureTable.from_dataset(items) if items is not None else None,
    )


def streaming_train_split(
    data: TrainingData, seed: int, process_index: int = 0, num_processes: int = 1, shards_per_process: int = 8
) -> IterableDataset:
    """The train split as a streaming ``datasets.IterableDataset`` for this process: read shard by shard from the
    memory-mapped files (nothing materialised), each process reading its own shards (``split_dataset_by_node``),
    shuffled by shard order and a buffer, anew at each ``set_epoch(epoch)`` (seeded: the same on every run).

    The rows of one process differ from the others' by at most a few (near-equal contiguous shards): a loop over it
    drops the last incomplete batch or caps the steps per epoch, so that every process takes the same number of
    steps.
    """
    train = data.splits["train"]
    num_shards = min(len(train), num_processes * shards_per_process)
    iterable = train.to_iterable_dataset(num_shards=num_shards).shuffle(seed=seed, buffer_size=1_000)
    return split_dataset_by_node(iterable, rank=process_index, world_size=num_processes)


def _hub_item_features(repo_id: str) -> Dataset | None:
    """The item table pushed beside a Hub dataset's splits, or None."""
    try:
        return Dataset.from_parquet(hf_hub_download(repo_id, ITEMS_PARQUET, repo_type="dataset"))
    except EntryNotFoundError:
        return None


def set_model_item_features(model: torch.nn.Module, data: TrainingData) -> None:
    """Give a model built with `data.item_features` its item -> category table and the items of the train split
    (the others are cold-start items, see `recommend(cold_start_items=True)`); nothing without item features."""
    if data.item_features is None:
        return
    trained = np.zeros(data.vocabulary.num_items + 1, dtype=bool)
    trained[pc.list_flatten(data.splits["train"].data.column("item_ids")).to_numpy()] = True
    model.set_item_features(torch.from_numpy(data.item_features.feature_ids), torch.from_numpy(trained))
