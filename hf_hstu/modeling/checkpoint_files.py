"""Errors that name the weights file at fault when a checkpoint cannot be read.

safetensors reports a truncated or corrupt file as `SafetensorError('Error while deserializing header: ...')`,
without its path. `naming_corrupt_weights` turns that into a `CorruptWeightsError` naming the file (in the folder,
or in the Hub cache) and what is wrong with it. Only stdlib, safetensors and huggingface_hub are imported, so that
the module can be part of the remote-code closure of the models.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open

_HEADER_LENGTH_BYTES = 8


class CorruptWeightsError(OSError):
    """A weights file of a checkpoint is truncated or corrupt."""


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the safetensors file `path` (truncated, bad header, unreadable), or None if it reads."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(_HEADER_LENGTH_BYTES)
        if len(prefix) < _HEADER_LENGTH_BYTES:
            return f"it holds {size} bytes, not even the {_HEADER_LENGTH_BYTES}-byte length of a safetensors header"
        header_length = int.from_bytes(prefix, "little")
        if _HEADER_LENGTH_BYTES + header_length > size:
            return (
                f"its header announces {header_length} bytes of metadata but the file holds only {size} bytes: it is "
                "truncated, or not a safetensors file"
            )
        try:
            header = json.loads(file.read(header_length))
            data_length = max(
                (entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0
            )
        except (ValueError, TypeError, KeyError, IndexError):
            return "its header is not valid safetensors JSON: the file is corrupt"
    expected = _HEADER_LENGTH_BYTES + header_length + data_length
    if expected != size:
        cause = "it is truncated (an interrupted save or download)" if size < expected else "it is corrupt"
        return f"it holds {size} bytes but its header describes {expected} bytes: {cause}"
    try:
        safe_open(str(path), framework="pt").keys()  # the library's own reading of the header and its entries
    except SafetensorError as error:
        return str(error)
    return None


def _weights_files(model_name_or_path: str | os.PathLike, revision: str | None, subfolder: str) -> list[Path]:
    """The safetensors files of a checkpoint folder, or of the cached snapshot of a Hub repository."""
    folder = Path(model_name_or_path) / subfolder
    if not folder.is_dir():
        config_file = "/".join(filter(None, [subfolder, "config.json"]))
        cached = try_to_load_from_cache(str(model_name_or_path), config_file, revision=revision)
        if not isinstance(cached, str):
            return []
        folder = Path(cached).parent
    return sorted(folder.glob("*.safetensors"))


@contextmanager
def naming_corrupt_weights(
    model_name_or_path: str | os.PathLike, revision: str | None = None, subfolder: str = ""
) -> Iterator[None]:
    """Re-raise a `SafetensorError` of loading `model_name_or_path` (a folder or a Hub repository id) as a
    `CorruptWeightsError` that names the file and what is wrong with it.

    ```python
    with naming_corrupt_weights("outputs/run/best_model"):
        model = AutoModel.from_pretrained("outputs/run/best_model")
    ```
    """
    try:
        yield
    except SafetensorError as error:
        for path in _weights_files(model_name_or_path, revision, subfolder):
            problem = safetensors_problem(path)
            if problem is not None:
                raise CorruptWeightsError(
                    f"Cannot load {model_name_or_path}: the weights file {path} is unreadable: {problem}. Save the "
                    "model again, or download it again (from_pretrained(..., force_download=True))."
                ) from error
        raise CorruptWeightsError(f"Cannot load {model_name_or_path}: a weights file is unreadable: {error}") from error
