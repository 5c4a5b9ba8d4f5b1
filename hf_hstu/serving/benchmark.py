"""Pieces of `scripts/bench_batch_recommend.py`: a synthetic large-catalogue checkpoint and histories file, a command
timed with its own peak resident memory, and the recall of approximate recommendations against exact ones."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.vocabulary import ItemVocabulary
from ..modeling.configuration_hstu import HSTUConfig
from ..modeling.modeling_hstu import HSTUModel


def synthetic_catalogue_checkpoint(
    path: str | os.PathLike,
    num_items: int,
    hidden_size: int = 50,
    max_seq_len: int = 200,
    num_clusters: int = 1000,
    seed: int = 0,
) -> Path:
    """Save an untrained HSTU (the ML-1M architecture by default) over `num_items` items with integer raw ids
    1_000_001.. and its vocabulary. Item embeddings are clustered (`num_clusters` directions plus noise), as trained
    catalogues are, so that an approximate index has structure to find; the encoder weights are random."""
    torch.manual_seed(seed)
    config = HSTUConfig(
        num_items=num_items,
        max_seq_len=max_seq_len,
        hidden_size=hidden_size,
        attention_dim=hidden_size,
        linear_dim=hidden_size,
    )
    model = HSTUModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, hidden_size, generator=generator)
    clusters = torch.randint(0, num_clusters, (num_items,), generator=generator)
    with torch.no_grad():
        weights = model.item_embeddings.weight
        weights[1:] = centres[clusters] + 0.5 * torch.randn(num_items, hidden_size, generator=generator)
        weights[1:] *= config.initializer_range
    path = Path(path)
    model.save_pretrained(path)
    ItemVocabulary(np.arange(1_000_001, 1_000_001 + num_items)).save(path)
    return path


def synthetic_histories(
    path: str | os.PathLike, num_users: int, num_items: int, min_length: int = 10, max_length: int = 200, seed: int = 0
) -> Path:
    """Write a Parquet file of `num_users` histories (user, item, timestamp; lengths uniform in [min_length,
    max_length], items uniform over the raw ids of `synthetic_catalogue_checkpoint`, times increasing)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, max_length + 1, num_users)
    users = np.repeat(np.arange(num_users), lengths)
    items = 1_000_001 + rng.integers(0, num_items, int(lengths.sum()))
    gaps = rng.integers(1, 86_400, int(lengths.sum()))
    timestamps = 1_600_000_000 + np.cumsum(gaps)  # increasing over the file, so within each user too
    path = Path(path)
    pd.DataFrame({"user": users, "item": items, "timestamp": timestamps}).to_parquet(path)
    return path


def run_measured(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `command`; its wall-clock seconds, CPU seconds (user + system) and peak resident memory (MiB), of that
    process alone (`os.wait4`), and its stdout parsed as JSON when it is JSON. A failure raises with the command's
    stderr."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        seconds = time.perf_counter() - start
        stdout.seek(0), stderr.seek(0)
        printed, errors = stdout.read(), stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{errors[-5000:]}")
    try:
        output = json.loads(printed)
    except json.JSONDecodeError:
        output = printed
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "output": output,
    }


def recall_at_k(exact: str | os.PathLike, approximate: str | os.PathLike) -> float:
    """The fraction of the exact (user, item) recommendations that the approximate file also has."""
    truth = pd.read_parquet(exact, columns=["user", "item"])
    found = pd.read_parquet(approximate, columns=["user", "item"])
    return len(truth.merge(found, on=["user", "item"])) / len(truth)
