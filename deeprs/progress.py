"""Progress of a long loop: a live bar on a terminal, plain lines in a log file.

Snakemake sends every job's stderr to a log file, where a tqdm bar becomes one line of
carriage returns. :class:`Progress` draws the bar only when stderr is a terminal; otherwise
it logs one plain line at each tenth of the loop (and at least every ``every_s`` seconds).
Either way, :meth:`Progress.close` logs one summary line: count, time, rate and the last
values given (e.g. the final losses), which is what a reader of ``train.log`` looks for.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TextIO

LOG = logging.getLogger(__name__)
MILESTONES = 10  # plain lines per loop, besides the time-based ones


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _values(values: Mapping[str, object]) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


class Progress:
    """Counts ``total`` steps of a loop called ``desc``; use as a context manager or close().

    ``initial`` steps count as done before the start (a resumed training run); rates and
    times cover only the steps of this run.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        every_s: float = 60.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.initial = self.done = initial
        self.every_s = every_s
        self.values: dict[str, object] = {}
        self._started = self._last_line = time.perf_counter()
        self._next_milestone = self._milestone_after(initial)
        self._closed = False
        stream = sys.stderr if stream is None else stream
        self._bar = None
        if stream.isatty():  # tqdm only here: a machine without it still logs plain lines
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=stream, mininterval=1.0
            )

    def _milestone_after(self, done: int) -> int:
        step = max(1, -(-self.total // MILESTONES))
        return (done // step + 1) * step

    def rate(self) -> float:
        """Steps per second of this run so far."""
        seconds = time.perf_counter() - self._started
        return (self.done - self.initial) / seconds if seconds > 0 else 0.0

    def update(self, n: int = 1, values: Mapping[str, object] | None = None) -> None:
        """Count ``n`` more steps; ``values`` (e.g. losses) replace the last ones shown."""
        self.done += n
        if values is not None:
            self.values = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(self.values, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.done >= self._next_milestone or now - self._last_line >= self.every_s:
            self._next_milestone = self._milestone_after(self.done)
            self._last_line = now
            self._log_line(now)

    def _log_line(self, now: float) -> None:
        rate = self.rate()
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _duration(remaining) if remaining == remaining else "?"
        line = (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(1, self.total):.0f} %), "
            f"{rate:.3g} {self.unit}/s, elapsed {_duration(now - self._started)}, left {eta}"
        )
        LOG.info("%s%s", line, f"; {_values(self.values)}" if self.values else "")

    def summary(self) -> str:
        """``desc: done N it in H:MM:SS (R it/s); last: values``."""
        seconds = time.perf_counter() - self._started
        line = (
            f"{self.desc}: done {self.done - self.initial} {self.unit} in {_duration(seconds)} "
            f"({self.rate():.3g} {self.unit}/s)"
        )
        if self.initial:
            line += f", resumed at {self.initial}"
        return line + (f"; last: {_values(self.values)}" if self.values else "")

    def close(self) -> None:
        """End the bar and log the summary line (once)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        LOG.info("%s", self.summary())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()
