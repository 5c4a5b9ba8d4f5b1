"""Helpers shared by the data pipeline tests: where the offline copies of the real datasets are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared/data beside the repository; HF_HSTU_SHARED_DATA overrides it.
SHARED_DATA = Path(os.environ.get("HF_HSTU_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Folder ``name`` of the shared data, or skip the test when it is absent."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real dataset folder {folder} is absent (set HF_HSTU_SHARED_DATA to the shared data folder)")
    return folder
