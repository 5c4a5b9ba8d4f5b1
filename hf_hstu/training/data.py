"""The training loop's data: a preprocessed dataset folder, or a dataset built in memory by name."""

import json
from dataclasses import dataclass
from pathlib import Path

from datasets import DatasetDict

from ..data import (
    METADATA_FILE,
    ItemVocabulary,
    PreprocessingConfig,
    SequenceCollator,
    load_sequences,
    preprocess,
)
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
    collator: SequenceCollator
    metadata: dict

    @property
    def protocol_text(self) -> str:
        return PROTOCOL_DESCRIPTIONS.get(self.metadata.get("split"), str(self.metadata.get("split")))


def load_training_data(data_args: DataArguments, max_seq_len: int) -> TrainingData:
    """Load `data_args.dataset`: a folder written by `scripts/preprocess.py`, or else a dataset name that is built
    in memory (from `data_args.raw_dir` or the official download)."""
    path = Path(data_args.dataset).expanduser()
    if path.exists():
        if not (path / METADATA_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a preprocessed dataset folder (no {METADATA_FILE} in it). Create one with "
                f"`python scripts/preprocess.py --dataset NAME --output {path}`."
            )
        splits = load_sequences(path)
        vocabulary = ItemVocabulary.load(path)
        metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    else:
        if any(separator in data_args.dataset for separator in ("/", "\\")):
            raise FileNotFoundError(f"Dataset folder not found: {path}")
        built = preprocess(
            data_args.dataset, config=PreprocessingConfig(split=data_args.protocol), raw_dir=data_args.raw_dir
        )
        splits, vocabulary, metadata = built.dataset, built.item_vocabulary, built.metadata
    if "train" not in splits or "test" not in splits:
        raise ValueError(f"{data_args.dataset}: expected train and test splits, found {sorted(splits)}.")
    return TrainingData(
        name=dataset_display_name(metadata.get("dataset", data_args.dataset), metadata),
        splits=splits,
        vocabulary=vocabulary,
        collator=SequenceCollator(max_seq_len=max_seq_len),
        metadata=metadata,
    )
