"""Progress of the data pipeline: a tqdm bar on a terminal, one log line per phase anywhere else.

A bar redrawn with carriage returns is unreadable in a file (CI logs, ``nohup``): it becomes thousands of partial
lines. When stderr is not a terminal, :func:`progress` returns a :class:`PhaseLog` instead, which logs one line
when each phase starts and one when it ends (logger ``hf_hstu.data``, level INFO), and
:func:`library_bars_unless_interactive` turns off the bars of ``datasets`` and ``huggingface_hub`` (saving,
uploading) for the duration.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import datasets.utils
import huggingface_hub.utils
from tqdm.auto import tqdm

logger = logging.getLogger("hf_hstu.data")


class PhaseLog:
    """The part of tqdm's interface the pipeline uses (``update``, ``set_description``, ``close``, ``with``), as log
    lines: one per description (phase) and a last one with the total and the time taken."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", unit_scale: bool = False):
        self.total, self.n, self.desc, self.unit, self.unit_scale = total, 0, desc, unit, unit_scale
        self._start = time.perf_counter()
        logger.info("%s ...", desc)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        self.desc = desc
        logger.info("%s ...", desc)

    def close(self) -> None:
        done = tqdm.format_sizeof(self.n, self.unit) if self.unit_scale else f"{self.n} {self.unit}"
        logger.info("%s: done (%s in %.1f s)", self.desc, done, time.perf_counter() - self._start)

    def __enter__(self) -> PhaseLog:
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is None:  # a failed phase is reported by its exception, not as done
            self.close()


def interactive() -> bool:
    """Whether stderr (where bars are drawn) is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def progress(total: int | None = None, desc: str = "", unit: str = "it", unit_scale: bool = False) -> tqdm | PhaseLog:
    """A tqdm bar when stderr is a terminal, else a :class:`PhaseLog` (same arguments)."""
    if interactive():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale)
    return PhaseLog(total, desc, unit, unit_scale)


@contextmanager
def library_bars_unless_interactive() -> Iterator[None]:
    """Within the block, the progress bars of ``datasets`` and ``huggingface_hub`` are off unless stderr is a
    terminal (they are restored afterwards; bars already turned off stay off)."""
    turned_off = []
    if not interactive():
        for library in (datasets.utils, huggingface_hub.utils):
            if not library.are_progress_bars_disabled():
                library.disable_progress_bars()
                turned_off.append(library)
    try:
        yield
    finally:
        for library in turned_off:
            library.enable_progress_bars()
