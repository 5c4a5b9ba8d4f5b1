"""Categorical item features: an item table (MovieLens genres, or any table with an id column and categorical
columns) aligned with the item vocabulary, saved beside the sequences, and encoded for the model.

The item table is a ``datasets.Dataset`` with one row per item of the vocabulary, in index order: ``item_id``
(1..num_items), ``raw_item_id`` (the id of the source) and one column per feature holding a list of category
strings (multi-valued: a film has several genres; an item missing from the source table has empty lists).

It is kept as a dataset of its own beside the splits (``items/`` with ``save_to_disk``, ``items.parquet`` with
parquet or on the Hub), not as a split of the ``DatasetDict``: the splits are user rows sharing one schema (a Hub
dataset config has one schema, and training and evaluation iterate the splits as users), while the item table is
another kind of row, as a second config of a Hub dataset.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pandas as pd

from .download import fetch_movielens
from .vocabulary import ItemVocabulary

if TYPE_CHECKING:
    from .preprocessing import SequenceData

logger = logging.getLogger(__name__)

PathLike = str | Path
ITEMS_DIR = "items"
ITEMS_PARQUET = "items.parquet"

# The 19 genres of MovieLens-100K's u.item flag columns, in column order (u.genre).
ML_100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
MOVIELENS_ITEM_FILES = {
    "ml-100k": "u.item",
    "ml-1m": "movies.dat",
    "ml-20m": "movies.csv",
    "ml-latest-small": "movies.csv",
}
_NO_GENRES = "(no genres listed)"  # ml-latest / ml-20m's value for a film without genres


@dataclass
class ItemTableConfig:
    """Where the item features come from; also the ``preprocess.py`` flags."""

    item_table: str | None = field(
        default=None,
        metadata={
            "help": "Item table (CSV/TSV/Parquet) with an id column and categorical columns; for MovieLens "
            "datasets 'genres' reads the genres of the release's own movie file (u.item, movies.dat, movies.csv)."
        },
    )
    item_table_id_col: str = field(default="item_id", metadata={"help": "Item table: the raw item id column."})
    item_feature_cols: str | None = field(
        default=None, metadata={"help": "Item table: comma-separated categorical columns (default: all others)."}
    )
    item_feature_separator: str = field(
        default="|", metadata={"help": "Item table: separator of several values in one cell (e.g. A|B)."}
    )
    add_item_table_items: bool = field(
        default=False,
        metadata={
            "help": "Add the item table's items that no kept interaction has to the catalogue (after the others): "
            "new items that a model can recommend from their features alone (recommend(cold_start_items=True))."
        },
    )


def read_movielens_items(path: PathLike, version: str) -> pd.DataFrame:
    """``item_id`` and ``genres`` (lists of strings) of a MovieLens movie file: ``u.item`` (ml-100k, genre flag
    columns), ``movies.dat`` (ml-1m, ``MovieID::Title::Genres``) or ``movies.csv`` (ml-20m, ml-latest-small)."""
    path = Path(path)
    ids, genres = [], []
    if version == "ml-100k":
        with path.open(encoding="latin-1") as lines:
            for number, line in enumerate(lines, 1):
                fields = line.rstrip("\n").split("|")
                flags = fields[5:]
                if len(fields) != 5 + len(ML_100K_GENRES) or any(flag not in ("0", "1") for flag in flags):
                    raise ValueError(
                        f"{path}, line {number}: expected 24 '|'-separated fields ending in 19 genre flags (0/1)"
                    )
                ids.append(_integer_id(fields[0], path, number))
                genres.append([name for name, flag in zip(ML_100K_GENRES, flags, strict=True) if flag == "1"])
    elif version == "ml-1m":
        with path.open(encoding="latin-1") as lines:
            for number, line in enumerate(lines, 1):
                fields = line.rstrip("\n").split("::")
                if len(fields) != 3:
                    raise ValueError(f"{path}, line {number}: expected MovieID::Title::Genres, got {line.strip()!r}")
                ids.append(_integer_id(fields[0], path, number))
                genres.append(fields[2].split("|") if fields[2] else [])
    elif version in ("ml-20m", "ml-latest-small"):
        with path.open(encoding="utf-8", newline="") as lines:
            rows = csv.reader(lines)
            header = next(rows, None)
            if header is None or header[:1] != ["movieId"] or "genres" not in header:
                raise ValueError(f"{path}, line 1: expected a header movieId,title,genres, got {header}")
            position = header.index("genres")
            for number, row in enumerate(rows, 2):
                if len(row) != len(header):
                    raise ValueError(f"{path}, line {number}: expected {len(header)} fields, got {len(row)}")
                ids.append(_integer_id(row[0], path, number))
                value = row[position]
                genres.append([] if value in ("", _NO_GENRES) else value.split("|"))
    else:
        raise ValueError(f"MovieLens {version!r} has no known movie file; known: {sorted(MOVIELENS_ITEM_FILES)}")
    if not ids:
        raise ValueError(f"{path}: no items")
    return pd.DataFrame({"item_id": np.asarray(ids, dtype=np.int64), "genres": genres})


def _integer_id(text: str, path: Path, number: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}, line {number}: item id {text!r} is not an integer") from None


def read_item_table(
    path: PathLike | pd.DataFrame,
    id_col: str = "item_id",
    feature_cols: list[str] | None = None,
    separator: str = "|",
) -> pd.DataFrame:
    """``item_id`` and one list-of-strings column per feature from a CSV/TSV/Parquet file (or a DataFrame): each
    cell is split on ``separator``; a missing cell is an empty list; list cells (Parquet) are kept as lists."""
    where = "the item table" if isinstance(path, pd.DataFrame) else str(path)
    if isinstance(path, pd.DataFrame):
        frame = path
    else:
        suffix = Path(path).suffix.lower()
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix in (".tsv", ".tab") else ",", dtype=object)
    if id_col not in frame.columns:
        raise ValueError(f"{where}: no id column {id_col!r}; columns: {list(frame.columns)}")
    feature_cols = feature_cols if feature_cols is not None else [c for c in frame.columns if c != id_col]
    missing = [column for column in feature_cols if column not in frame.columns]
    if missing or not feature_cols:
        raise ValueError(f"{where}: feature columns {missing or '(none)'} not found; columns: {list(frame.columns)}")
    ids = frame[id_col]
    if ids.isna().any():
        raise ValueError(f"{where}: row {int(np.flatnonzero(ids.isna())[0])} has no {id_col}")
    if pd.api.types.is_object_dtype(ids) and ids.map(lambda v: isinstance(v, str) and v.lstrip("-").isdigit()).all():
        ids = ids.astype(np.int64)  # CSV ids read as text: integers, as the interaction readers give them
    if ids.duplicated().any():
        raise ValueError(f"{where}: item id {ids[ids.duplicated()].tolist()[0]!r} appears more than once in {id_col}")
    table = {"item_id": ids.to_numpy()}
    for column in feature_cols:
        table[column] = [_values(cell, separator) for cell in frame[column]]
    return pd.DataFrame(table)


def _values(cell: object, separator: str) -> list[str]:
    """A cell as a list of category strings: split text, keep lists, empty for missing."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        return [str(value) for value in cell if value is not None and str(value) != ""]
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    return [value for value in str(cell).split(separator) if value != ""]


def load_item_table(
    dataset: str, config: ItemTableConfig, raw_dir: PathLike | None = None, cache_dir: PathLike | None = None
) -> pd.DataFrame:
    """The raw item table named by ``config``: ``genres`` of a MovieLens release (from ``raw_dir``, or the
    downloaded zip), or any table file."""
    if config.item_table is None:
        raise ValueError("ItemTableConfig.item_table is not set: pass a table file, or 'genres' for MovieLens")
    if config.item_table == "genres":
        name = dataset.lower()
        if name not in MOVIELENS_ITEM_FILES:
            raise ValueError(
                f"item_table='genres' reads MovieLens movie files; {dataset!r} has none (the shared Amazon files "
                "have no categories): pass an item table file instead"
            )
        folder = Path(raw_dir) if raw_dir is not None else fetch_movielens(name, cache_dir)
        file_name = MOVIELENS_ITEM_FILES[name]
        for candidate in (folder / file_name, folder / name / file_name):
            if candidate.is_file():
                return read_movielens_items(candidate, name)
        raise FileNotFoundError(f"No {file_name} for {dataset} in {folder} (or {folder / name})")
    columns = config.item_feature_cols.split(",") if config.item_feature_cols else None
    return read_item_table(config.item_table, config.item_table_id_col, columns, config.item_feature_separator)


def build_item_features(table: pd.DataFrame, vocabulary: ItemVocabulary) -> tuple[datasets.Dataset, dict]:
    """The item table of ``vocabulary`` (one row per item, index order; see the module docstring) from a raw table
    (``item_id`` and list columns), with a summary: items without features, table rows not in the vocabulary."""
    features = [column for column in table.columns if column != "item_id"]
    positions = vocabulary.lookup(table["item_id"].to_numpy()) - 1  # -1: not in the vocabulary
    known = positions >= 0
    if not known.any():
        examples = table["item_id"].head(3).tolist()
        raise ValueError(
            f"none of the item table's {len(table)} ids (e.g. {examples}) is in the item vocabulary "
            f"({vocabulary.id_type} ids, e.g. {vocabulary.raw_ids[:3]})"
        )
    num_items = len(vocabulary)
    row_of = np.full(num_items, -1, dtype=np.int64)
    row_of[positions[known]] = np.flatnonzero(known)
    columns: dict[str, list] = {"item_id": list(range(1, num_items + 1)), "raw_item_id": vocabulary.raw_ids}
    for feature in features:
        values = table[feature].tolist()
        columns[feature] = [values[row] if row >= 0 else [] for row in row_of]
    summary = {
        "features": features,
        "items_without_features": int((row_of < 0).sum()),
        "table_items_not_in_vocabulary": int((~known).sum()),
    }
    if summary["items_without_features"]:
        logger.warning(
            "%d of %d items are not in the item table: they get no features",
            summary["items_without_features"],
            num_items,
        )
    item_id_type = datasets.Value("int64") if vocabulary.id_type == "int" else datasets.Value("string")
    schema = datasets.Features(
        {
            "item_id": datasets.Value("int64"),
            "raw_item_id": item_id_type,
            **{feature: datasets.Sequence(datasets.Value("string")) for feature in features},
        }
    )
    return datasets.Dataset.from_dict(columns, features=schema), summary


def save_item_features(items: datasets.Dataset, folder: PathLike, format: str = "arrow") -> Path:
    """Write the item table into ``folder``: ``items/`` (``save_to_disk``) or ``items.parquet``."""
    if format == "arrow":
        items.save_to_disk(str(Path(folder) / ITEMS_DIR))
        return Path(folder) / ITEMS_DIR
    path = Path(folder) / ITEMS_PARQUET
    items.to_parquet(str(path))
    return path


def load_item_features(folder: PathLike) -> datasets.Dataset | None:
    """The item table saved beside the sequences in ``folder`` (``items/`` or ``items.parquet``), or None."""
    folder = Path(folder)
    if (folder / ITEMS_DIR).is_dir():
        return datasets.load_from_disk(str(folder / ITEMS_DIR))
    if (folder / ITEMS_PARQUET).is_file():
        return datasets.Dataset.from_parquet(str(folder / ITEMS_PARQUET))
    return None


@dataclass
class ItemFeatureTable:
    """Item features encoded for the model: per feature its categories (sorted; code c >= 1 is
    ``categories[f][c - 1]``, 0 is padding) and the (num_items + 1, sum(max_values)) matrix of codes, feature f
    holding ``max_values[f]`` slots (row 0: the padding item, all zero)."""

    names: list[str]
    categories: list[list[str]]
    max_values: list[int]
    feature_ids: np.ndarray

    @classmethod
    def from_dataset(cls, items: datasets.Dataset) -> ItemFeatureTable:
        """Encode an item table (see :func:`build_item_features`); its rows must be items 1..N in order."""
        item_ids = np.asarray(items["item_id"], dtype=np.int64)
        if not np.array_equal(item_ids, np.arange(1, len(items) + 1)):
            raise ValueError("the item table's item_id column must be 1..num_items in order (one row per item)")
        names = [name for name in items.column_names if name not in ("item_id", "raw_item_id")]
        if not names:
            raise ValueError("the item table has no feature column")
        categories, max_values, blocks = [], [], []
        for name in names:
            cells = items[name]
            vocabulary = sorted({value for cell in cells for value in cell})
            code = {value: index + 1 for index, value in enumerate(vocabulary)}
            width = max(1, max(len(cell) for cell in cells))
            block = np.zeros((len(items) + 1, width), dtype=np.int64)
            for row, cell in enumerate(cells, 1):
                block[row, : len(cell)] = [code[value] for value in cell]
            categories.append(vocabulary)
            max_values.append(width)
            blocks.append(block)
        return cls(names, categories, max_values, np.concatenate(blocks, axis=1))

    def config_fields(self) -> dict:
        """The model config fields that describe these features."""
        return {
            "item_feature_names": list(self.names),
            "item_feature_vocab_sizes": [len(values) for values in self.categories],
            "item_feature_max_values": list(self.max_values),
        }


def attach_item_features(
    data: SequenceData,
    dataset: str,
    config: ItemTableConfig,
    raw_dir: PathLike | None = None,
    raw_path: object = None,
    cache_dir: PathLike | None = None,
) -> None:
    """Build the item table of ``data``'s vocabulary from ``config`` and keep it in ``data.item_features`` (saved
    beside the splits), with its summary in ``data.metadata["item_features"]`` (see :func:`item_features_for`)."""
    data.item_features, data.item_vocabulary = item_features_for(
        data.item_vocabulary, data.metadata, dataset, config, raw_dir, raw_path, cache_dir
    )


def item_features_for(
    vocabulary: ItemVocabulary,
    metadata: dict,
    dataset: str,
    config: ItemTableConfig,
    raw_dir: PathLike | None = None,
    raw_path: object = None,
    cache_dir: PathLike | None = None,
) -> tuple[datasets.Dataset, ItemVocabulary]:
    """(The item table of the vocabulary, the vocabulary) from ``config``, its summary recorded in
    ``metadata["item_features"]``. A MovieLens ratings file given as ``raw_path`` is looked up beside its movie file.
    With ``config.add_item_table_items`` the vocabulary first gains the table's items that it lacks
    (`ItemVocabulary.extended`: the sequences' indices do not change) and ``metadata["num_items"]`` follows."""
    if raw_dir is None and isinstance(raw_path, (str, Path)):
        raw_dir = Path(raw_path).parent
    table = load_item_table(dataset, config, raw_dir, cache_dir)
    added = 0
    if config.add_item_table_items:
        try:
            extended = vocabulary.extended(table["item_id"].to_numpy())
        except TypeError as error:
            raise ValueError(
                f"{config.item_table}: its {config.item_table_id_col} ids do not match the "
                f"interactions' item ids ({error})"
            ) from None
        added = len(extended) - len(vocabulary)
        vocabulary = extended
        metadata["num_items"] = len(vocabulary)
    items, summary = build_item_features(table, vocabulary)
    metadata["item_features"] = {
        "source": config.item_table if config.item_table == "genres" else Path(config.item_table).name,
        "id_col": config.item_table_id_col,
        "separator": config.item_feature_separator,
        "items_only_in_item_table": added,
        **summary,
    }
    return items, vocabulary
