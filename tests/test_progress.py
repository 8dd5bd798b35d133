"""deeprs.progress: plain lines in a log file, a bar only on a terminal, one summary line."""

from __future__ import annotations

import io
import logging
import re

import pytest

from deeprs.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_ten_plain_lines_and_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger="deeprs.progress")
    with Progress(200, "train deeprs fold_0", every_s=3600, stream=stream) as progress:
        for step in range(200):
            progress.update(values={"r": f"{1 / (step + 1):.3g}"})
    lines = [record.getMessage() for record in caplog.records]
    assert stream.getvalue() == ""  # no bar, no carriage returns
    assert len(lines) == 11
    assert lines[0].startswith("train deeprs fold_0: 20/200 it (10 %), ")
    assert lines[9].startswith("train deeprs fold_0: 200/200 it (100 %), ")
    assert not any("\r" in line for line in lines)
    summary = lines[-1]
    assert re.fullmatch(
        r"train deeprs fold_0: done 200 it in \d+:\d\d:\d\d \([\d.e+]+ it/s\); last: r=0\.005",
        summary,
    ), summary


def test_a_resumed_loop_counts_only_its_own_steps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deeprs.progress")
    progress = Progress(10, "train", initial=6, every_s=3600, stream=io.StringIO())
    for _ in range(4):
        progress.update()
    progress.close()
    progress.close()  # once only
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(",")[0] for line in lines[:-1]] == [
        "train: 7/10 it (70 %)",
        "train: 8/10 it (80 %)",
        "train: 9/10 it (90 %)",
        "train: 10/10 it (100 %)",
    ]
    assert lines[-1].startswith("train: done 4 it in ") and lines[-1].endswith(", resumed at 6")


def test_slow_steps_get_a_line_at_least_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deeprs.progress")
    progress = Progress(1000, "evaluate", unit="pair", every_s=0.0, stream=io.StringIO())
    for _ in range(3):
        progress.update()
    assert [record.getMessage().split(",")[0] for record in caplog.records] == [
        "evaluate: 1/1000 pair (0 %)",
        "evaluate: 2/1000 pair (0 %)",
        "evaluate: 3/1000 pair (0 %)",
    ]


def test_a_terminal_gets_a_bar_and_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    terminal = Terminal()
    caplog.set_level(logging.INFO, logger="deeprs.progress")
    with Progress(5, "phantom", unit="case", stream=terminal) as progress:
        for _ in range(5):
            progress.update()
    assert "phantom" in terminal.getvalue() and "5/5" in terminal.getvalue()
    assert [record.getMessage().split(" in ")[0] for record in caplog.records] == [
        "phantom: done 5 case"
    ]
