"""Progress output: a tqdm bar on a terminal (or in Jupyter), one line per phase anywhere else.

A bar redrawn with carriage returns is what a terminal needs, but in a log file, a pipe or CI it becomes thousands
of partial lines. Elsewhere, training and evaluation phases (`PhaseProgress`) write one line when they end, data
pipeline phases (`progress`, a `PhaseLog`) log one line when they start and one when they end (logger
``hf_hstu.data``, INFO), and `quiet_library_progress_bars` silences the bars of transformers, huggingface_hub and
datasets (saving, loading, uploading) for the duration.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO

import datasets.utils.logging as datasets_logging
import huggingface_hub.utils as hub_utils
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

data_logger = logging.getLogger("hf_hstu.data")


def is_interactive(stream: IO | None = None) -> bool:
    """Whether `stream` (default: stderr, where progress goes) is a terminal, or a Jupyter kernel's output (which
    draws bars in place)."""
    stream = sys.stderr if stream is None else stream
    if type(stream).__module__.split(".")[0] == "ipykernel":
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class PhaseProgress:
    """Iterate over `iterable` showing progress: a tqdm bar on a terminal, else one line when `close()` is called
    (`<desc>: <n> batches in <s> s, <postfix>`). Nothing at all with `disable=True` (e.g. on other processes)."""

    def __init__(self, iterable: Iterable, desc: str, disable: bool = False, stream: IO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.desc, self.disable = desc, disable
        self.count, self.postfix, self.closed = 0, {}, False
        self.start = time.perf_counter()
        self.bar = None
        if not disable and is_interactive(self.stream):
            self.bar = tqdm(iterable, desc=desc, leave=False, file=self.stream)
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        for item in self.bar if self.bar is not None else self.iterable:
            self.count += 1
            yield item

    def set_postfix(self, **values) -> None:
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        """End the phase: close the bar, or write its line (once)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif not self.disable:
            details = "".join(f", {name} {value}" for name, value in self.postfix.items())
            seconds = time.perf_counter() - self.start
            self.stream.write(f"{self.desc}: {self.count} batches in {seconds:.1f} s{details}\n")
            self.stream.flush()


@contextmanager
def quiet_library_progress_bars(stream: IO | None = None) -> Iterator[None]:
    """Disable the progress bars of transformers, huggingface_hub and datasets while `stream` (default: stderr) is
    not a terminal; restore their previous state afterwards."""
    if is_interactive(stream):
        yield
        return
    states = (transformers_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled())
    states += (datasets_logging.is_progress_bar_enabled(),)
    transformers_logging.disable_progress_bar()  # huggingface_hub's too
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if states[0]:
            transformers_logging.enable_progress_bar()
        (hub_utils.enable_progress_bars if states[1] else hub_utils.disable_progress_bars)()
        if states[2]:
            datasets_logging.enable_progress_bar()


class PhaseLog:
    """The part of tqdm's interface the pipeline uses (``update``, ``set_description``, ``close``, ``with``), as log
    lines: one per description (phase) and a last one with the total and the time taken."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", unit_scale: bool = False):
        self.total, self.n, self.desc, self.unit, self.unit_scale = total, 0, desc, unit, unit_scale
        self._start = time.perf_counter()
        data_logger.info("%s ...", desc)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        self.desc = desc
        data_logger.info("%s ...", desc)

    def close(self) -> None:
        done = tqdm.format_sizeof(self.n, self.unit) if self.unit_scale else f"{self.n} {self.unit}"
        data_logger.info("%s: done (%s in %.1f s)", self.desc, done, time.perf_counter() - self._start)

    def __enter__(self) -> PhaseLog:
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is None:  # a failed phase is reported by its exception, not as done
            self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", unit_scale: bool = False) -> tqdm | PhaseLog:
    """A tqdm bar when stderr is a terminal, else a :class:`PhaseLog` (same arguments)."""
    if is_interactive():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale)
    return PhaseLog(total, desc, unit, unit_scale)
