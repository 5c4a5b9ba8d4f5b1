"""Raw id <-> index vocabularies for items and users.

Items are numbered 1..num_items so that index 0 stays free for padding; users get 1..num_users the same way.
The preprocessing numbers raw ids in sorted order (numerically for integer ids, lexicographically for strings),
so the same set of ids always gives the same vocabulary, whatever the row order of the source file. Items that only
an item table lists (``add_item_table_items``) follow the items of the interactions, in sorted order too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

RawId = int | str


class Vocabulary:
    """Bijection between raw ids (all int or all str) and indices 1..len(self); 0 is reserved for padding."""

    file_name: ClassVar[str] = "vocabulary.json"
    kind: ClassVar[str] = "id"

    def __init__(self, raw_ids: Sequence[RawId] | np.ndarray | pd.Index):
        index = pd.Index(raw_ids)
        if index.has_duplicates:
            duplicates = index[index.duplicated()].unique()[:5].tolist()
            raise ValueError(f"{type(self).__name__}: duplicate raw ids {duplicates}")
        if pd.api.types.is_integer_dtype(index.dtype):
            self.id_type = "int"
            index = index.astype(np.int64)
        elif len(index) == 0 or all(isinstance(raw_id, str) for raw_id in index):
            self.id_type = "str"
            index = index.astype(object)
        else:
            raise TypeError(f"{type(self).__name__}: raw ids must be all integers or all strings, got {index.dtype}")
        self._index = index

    @property
    def raw_ids(self) -> list[RawId]:
        """Raw ids in index order: ``raw_ids[k]`` has index ``k + 1``."""
        return self._index.tolist()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, raw_id: object) -> bool:
        return raw_id in self._index

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._index.equals(other._index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={len(self)}, id_type={self.id_type!r})"

    def extended(self, raw_ids: Iterable[RawId] | np.ndarray) -> Vocabulary:
        """This vocabulary with the ids of `raw_ids` that it lacks appended in sorted order (indices len + 1, ...):
        the indices of its own ids do not change."""
        new = pd.Index(raw_ids).unique()
        new = new[self.lookup(new.to_numpy()) == 0].sort_values()
        if len(new) and len(self) and Vocabulary(new).id_type != self.id_type:
            raise TypeError(
                f"{type(self).__name__}: cannot add {Vocabulary(new).id_type} ids (e.g. {new[:3].tolist()}) to "
                f"{self.id_type} ids (e.g. {self.raw_ids[:3]})"
            )
        return type(self)(self._index.append(new))

    def lookup(self, raw_ids: Iterable[RawId] | np.ndarray) -> np.ndarray:
        """Indices (int64) of ``raw_ids``: 1..len for known ids, 0 (the padding index) for unknown ones."""
        values = raw_ids if isinstance(raw_ids, np.ndarray) else list(raw_ids)
        if len(values) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._index.get_indexer(pd.Index(values)).astype(np.int64) + 1

    def encode(self, raw_ids: Iterable[RawId] | RawId) -> np.ndarray:
        """Indices (int64, 1..len) of ``raw_ids``; an unknown raw id raises a KeyError naming it."""
        values = [raw_ids] if isinstance(raw_ids, (int, str, np.integer)) else list(raw_ids)
        indices = self.lookup(values)
        unknown = indices == 0
        if unknown.any():
            missing = [values[i] for i in np.flatnonzero(unknown)[:5]]
            raise KeyError(f"{self.kind} ids not in the {type(self).__name__} ({self.id_type} ids): {missing}")
        return indices

    def decode(self, indices: Iterable[int] | np.ndarray) -> list[RawId]:
        """Raw ids of ``indices`` (1..len); 0 (padding) or an index out of range raises a ValueError."""
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = (positions < 1) | (positions > len(self))
        if bad.any():
            raise ValueError(
                f"{self.kind} indices out of range 1..{len(self)} (0 is padding): {positions[bad][:5].tolist()}"
            )
        return self._index[positions - 1].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id_type": self.id_type, "raw_ids": self.raw_ids}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<directory>/<file_name>`` and return its path."""
        path = Path(directory) / self.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        head = json.dumps({key: value for key, value in self.to_dict().items() if key != "raw_ids"} | {"raw_ids": []})
        with path.open("w", encoding="utf-8") as file:  # json.dumps(self.to_dict()), without the whole list in memory
            file.write(head[:-2])  # up to the list's opening bracket
            for start in range(0, len(self), 2**16):
                file.write((", " if start else "") + json.dumps(self._index[start : start + 2**16].tolist())[1:-1])
            file.write("]}")
        return path

    @classmethod
    def load(cls, path_or_dir: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary from its JSON file, or from ``<dir>/<file_name>``."""
        path = Path(path_or_dir)
        if path.is_dir():
            path = path / cls.file_name
        if not path.is_file():
            raise FileNotFoundError(f"No {cls.__name__} file at {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "raw_ids" not in data or data.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"{path} is not a {cls.__name__} file (expected a JSON object with kind={cls.kind!r})")
        raw_ids = data["raw_ids"]
        if data.get("id_type") == "int":
            raw_ids = np.asarray(raw_ids, dtype=np.int64)
        return cls(raw_ids)


class ItemVocabulary(Vocabulary):
    """Raw item id <-> item index 1..num_items (0 = padding), saved as ``item_vocabulary.json``."""

    file_name: ClassVar[str] = "item_vocabulary.json"
    kind: ClassVar[str] = "item"

    @property
    def num_items(self) -> int:
        return len(self)


class UserVocabulary(Vocabulary):
    """Raw user id <-> user index 1..num_users, saved as ``user_vocabulary.json``."""

    file_name: ClassVar[str] = "user_vocabulary.json"
    kind: ClassVar[str] = "user"

    @property
    def num_users(self) -> int:
        return len(self)
