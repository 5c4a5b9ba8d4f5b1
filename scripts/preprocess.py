"""Preprocess a recommendation dataset into per-user sequences (``datasets.DatasetDict``) and item/user vocabularies.

Examples::

    python scripts/preprocess.py --dataset ml-1m --output data/ml-1m
    python scripts/preprocess.py --dataset amazon-books --raw-dir ~/raw/amazon --output data/amazon-books
    python scripts/preprocess.py --dataset csv --raw-path my_events.parquet --user-col u --item-col i --time-col t \\
        --output data/mine
    python scripts/preprocess.py --dataset synthetic --output data/synthetic --push-to-hub org/synthetic-sequences
    python scripts/preprocess.py --dataset ml-1m --item_table genres --output data/ml-1m-genres
    python scripts/preprocess.py --dataset csv --raw-path clicks.csv --timestamp_unit ms --duplicates drop \\
        --output data/clicks
    python scripts/preprocess.py --dataset amazon-books --raw-dir ~/raw/amazon --memory_budget_mb 1024 \\
        --output data/amazon-books

--memory_budget_mb streams a log that does not fit in memory: chunked reading, an external sort and splits written
shard by shard, with peak memory following the budget (plus about 0.6 GB of libraries and ~50 bytes per user and
item) instead of the data; the output is the same.

Timestamps must be whole unix seconds unless --timestamp_unit says how to convert them (a fraction of a second, or
milliseconds, is an error naming the file, line and column). Exact duplicate rows are kept and counted by default
(--duplicates). A MovieLens ratings file given with --raw-dir / --raw-path is compared with the official one (rows,
size, checksum): a modified or partial file is reported, and recorded in preprocessing.json (source_modified).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Literal

from transformers import HfArgumentParser

from hf_hstu.data import PreprocessingConfig, preprocess
from hf_hstu.data.item_features import ItemTableConfig


@dataclass
class SourceArguments:
    dataset: str = field(
        metadata={
            "help": "ml-100k, ml-1m, ml-20m, ml-latest-small, amazon-<category> (ratings_<Category>.csv), "
            "amazon-<category>-5core (review JSON or *_item_org_rank.txt files), csv (any table, see --raw-path) "
            "or synthetic."
        }
    )
    raw_dir: str | None = field(
        default=None, metadata={"help": "Folder with the raw files (MovieLens: default is to download the zip)."}
    )
    raw_path: str | None = field(default=None, metadata={"help": "The raw file itself (CSV/TSV/Parquet for csv)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache (default ~/.cache/hf_hstu)."})
    user_col: str = field(default="user_id", metadata={"help": "csv: user column."})
    item_col: str = field(default="item_id", metadata={"help": "csv: item column."})
    time_col: str = field(
        default="timestamp", metadata={"help": "csv: timestamp column (unix seconds, or see --timestamp_unit)."}
    )
    rating_col: str | None = field(default=None, metadata={"help": "csv: rating column (optional)."})
    delimiter: str | None = field(default=None, metadata={"help": "csv: field separator (default by extension)."})
    errors: Literal["raise", "skip"] = field(
        default="raise", metadata={"help": "Malformed rows: raise on the first, or skip and count them."}
    )
    timestamp_unit: Literal["s", "ms", "us"] | None = field(
        default=None,
        metadata={
            "help": "Unit of numeric timestamps, converted to unix seconds (floored). Unset: whole seconds are "
            "required, and a fraction of a second or a value after the year 5000 (milliseconds?) is an error "
            "naming the file, line and column."
        },
    )


@dataclass
class OutputArguments:
    output: str | None = field(default=None, metadata={"help": "Output folder (written atomically)."})
    format: Literal["arrow", "parquet"] = field(
        default="arrow", metadata={"help": "arrow (save_to_disk) or parquet (<split>.parquet)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id to push the result to."})
    private: bool | None = field(default=None, metadata={"help": "Make the pushed repo private."})
    memory_budget_mb: float | None = field(
        default=None,
        metadata={
            "help": "Stream in bounded memory (chunked reading, external sort, sharded output) with this budget for "
            "the per-event data; unset: in memory. Needs --output."
        },
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the module docstring as written, then every option with its default."""


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source, config, items, output = HfArgumentParser(
        (SourceArguments, PreprocessingConfig, ItemTableConfig, OutputArguments),
        description=__doc__,
        formatter_class=_HelpFormatter,
    ).parse_args_into_dataclasses()
    if output.output is None and output.push_to_hub is None:
        raise SystemExit("Nothing to do: pass --output and/or --push-to-hub")
    data = preprocess(
        source.dataset,
        output.output,
        config=config,
        raw_dir=source.raw_dir,
        raw_path=source.raw_path,
        cache_dir=source.cache_dir,
        user_col=source.user_col,
        item_col=source.item_col,
        time_col=source.time_col,
        rating_col=source.rating_col,
        delimiter=source.delimiter,
        errors=source.errors,
        timestamp_unit=source.timestamp_unit,
        save_format=output.format,
        overwrite=output.overwrite,
        push_to_hub=output.push_to_hub,
        private=output.private,
        memory_budget_mb=output.memory_budget_mb,
        item_table=items,
    )
    keys = (
        "num_users",
        "num_items",
        "num_interactions",
        "num_rows",
        "exact_duplicates",
        "source_verified",
        "item_features",
    )
    summary = {key: data.metadata[key] for key in keys if key in data.metadata}
    print(f"{source.dataset}: {summary} -> {output.output or output.push_to_hub}")


if __name__ == "__main__":
    main()
