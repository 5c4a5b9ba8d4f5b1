"""Progress of training and evaluation phases: a tqdm bar on a terminal, one line per phase anywhere else.

A tqdm bar redrawn with carriage returns is what a terminal needs, but in a log file, a pipe or CI it becomes
thousands of lines; there, `PhaseProgress` writes one line when the phase ends, and `quiet_library_progress_bars`
silences the bars of transformers, huggingface_hub and datasets (saving and loading checkpoints, uploads).
"""

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO

import datasets.utils.logging as datasets_logging
import huggingface_hub.utils as hub_utils
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging


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
