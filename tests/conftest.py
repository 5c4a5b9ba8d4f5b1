"""Shared pytest fixtures."""

from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET when it is first imported (transformers imports it early): without a GPU, run the
# Triton kernels in the interpreter for the whole session.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from fake_hub import FakeHub  # noqa: E402

# Variables that would redirect part of the Hub clients' state away from the fixture's HF_HOME or endpoint.
_CLEARED_ENV = (
    "HF_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_DATASETS_CACHE",
    "HF_DATASETS_DOWNLOADED_DATASETS_PATH",
    "HF_DATASETS_EXTRACTED_DATASETS_PATH",
    "HF_MODULES_CACHE",
    "TRANSFORMERS_OFFLINE",
    "XDG_CACHE_HOME",
)


def _in_process_settings(endpoint: str, hf_home: Path) -> list[tuple[object, str, object]]:
    """(object, attribute, value) for every client setting that is read from the environment once, at import.

    `huggingface_hub.constants` and `datasets.config` compute the endpoint, cache folders and offline flag when first
    imported, and `huggingface_hub.hf_api.api` (behind `huggingface_hub.upload_file` & co.) keeps the endpoint it was
    built with, as does transformers' shared `HfApi`, so they are patched here (after importing them, if this process had not yet). transformers reads
    these through `huggingface_hub.constants`, except its dynamic-modules cache (`trust_remote_code`), which also
    lives in `sys.path` and `sys.modules`: load remote code in a subprocess to isolate it.
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.hf_api
    import transformers.utils.hub as transformers_hub

    hub_cache = hf_home / "hub"
    datasets_cache = hf_home / "datasets"
    return [
        (hub_constants, "ENDPOINT", endpoint),
        (hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (hub_constants, "HF_URL_HOSTS", hub_constants.HF_URL_HOSTS | {"127.0.0.1"}),
        (hub_constants, "HF_HOME", str(hf_home)),
        (hub_constants, "HF_HUB_CACHE", str(hub_cache)),
        (hub_constants, "HUGGINGFACE_HUB_CACHE", str(hub_cache)),
        (hub_constants, "HF_ASSETS_CACHE", str(hf_home / "assets")),
        (hub_constants, "HF_XET_CACHE", str(hf_home / "xet")),
        (hub_constants, "HF_TOKEN_PATH", str(hf_home / "token")),
        (hub_constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens")),
        (hub_constants, "HF_HUB_OFFLINE", False),
        (hub_constants, "HF_HUB_DISABLE_TELEMETRY", True),
        (hub_constants, "HF_HUB_DISABLE_XET", True),
        (huggingface_hub.hf_api.api, "endpoint", endpoint),
        # transformers keeps one HfApi, built with the endpoint of its first use: a fresh one per fake Hub
        *([(transformers_hub, "_hf_api", None)] if hasattr(transformers_hub, "_hf_api") else []),
        (datasets.config, "HF_ENDPOINT", endpoint),
        (datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        (datasets.config, "HF_HUB_OFFLINE", False),
        (datasets.config, "HF_DATASETS_OFFLINE", False),
        (datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False),
        (datasets.config, "HF_CACHE_HOME", str(hf_home)),
        (datasets.config, "HF_DATASETS_CACHE", datasets_cache),
        (datasets.config, "DOWNLOADED_DATASETS_PATH", datasets_cache / "downloads"),
        (datasets.config, "EXTRACTED_DATASETS_PATH", datasets_cache / "downloads" / "extracted"),
    ]


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub that every Hub client of this process, and of its subprocesses, talks to.

    Sets HF_ENDPOINT (the server), HF_HOME (a temporary folder), HF_HUB_OFFLINE=0, HF_DATASETS_OFFLINE=0, a dummy
    HF_TOKEN, HF_HUB_DISABLE_TELEMETRY=1 and HF_HUB_DISABLE_XET=1 in `os.environ`, which
    `subprocess.run([sys.executable, ...])` children inherit; clears the variables that would point a cache elsewhere;
    patches the settings this process read at import (see `_in_process_settings`); restores all of it afterwards.
    """
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    with FakeHub() as hub:
        # Built (and the clients imported) before the environment changes, so that teardown restores the real values.
        settings = _in_process_settings(hub.url, hf_home)
        for name in _CLEARED_ENV:
            monkeypatch.delenv(name, raising=False)
        environment = {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_TOKEN": "hf_fake_token_for_tests",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",  # the fake Hub speaks LFS, not Xet
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        for target, name, value in settings:
            monkeypatch.setattr(target, name, value)
        yield hub
