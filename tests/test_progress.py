"""The progress reporter of long work: plain lines every few seconds with the time left off a
terminal, a rich bar on one, nothing misleading when the work fails."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from online_gim.services.progress import ProgressReporter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(width: int = 300) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=width), out


def test_off_a_terminal_one_line_every_interval_with_the_time_left():
    console, out = plain()
    clock = Clock()
    with ProgressReporter("corpus synth: synthesising", total=40, unit="utterances", console=console,
                          interval=5.0, clock=clock) as progress:
        for done in range(1, 41):
            clock.now = float(done)  # one utterance a second
            progress(done, 40)
    lines = out.getvalue().splitlines()
    assert len(lines) == 9  # at 5, 10, ..., 40 s, and the last one
    assert lines[1] == "corpus synth: synthesising: 10/40 utterances (25%), 0:00:10 elapsed, about 0:00:30 left"
    assert lines[-1] == "corpus synth: synthesising: 40/40 utterances (100%), done in 0:00:40"


def test_without_a_total_no_share_and_no_estimate_but_the_status():
    console, out = plain()
    clock = Clock()
    progress = ProgressReporter("listen", unit="s of audio", console=console, interval=5.0, clock=clock)
    for window in range(1, 6):
        clock.now = 2.0 * window
        progress.update(1.28 * window, status=f"win {window}")
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines == ["listen: 3.8 s of audio, 0:00:06 elapsed, win 3", "listen: 6.4 s of audio, done in 0:00:10, win 5"]


def test_failed_work_gets_no_done_line_and_updates_after_close_are_ignored():
    console, out = plain()
    with pytest.raises(RuntimeError):
        with ProgressReporter("work", total=10, console=console) as progress:
            progress(3, 10)
            raise RuntimeError("espeak-ng is missing")
    progress(4, 10)
    assert out.getvalue() == ""


def test_on_a_terminal_a_bar_with_counts_and_status():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with ProgressReporter("listen", total=100.0, unit="s of audio", console=console) as progress:
        progress.update(25.0, status="rtf 0.20")
        assert progress.task.percentage == 25.0
    drawn = out.getvalue()
    assert "━" in drawn and "25%" in drawn and "25/100 s of audio" in drawn and "rtf 0.20" in drawn
    assert "elapsed" in drawn and "done in" not in drawn  # the bar stays; no plain line


def test_work_that_ends_short_of_its_total_says_so():
    console, out = plain()
    clock = Clock()
    progress = ProgressReporter("listen", total=100.0, unit="s of audio", console=console, clock=clock)
    clock.now = 30.0
    progress.update(12.8)
    progress.close()  # e.g. Ctrl-C: the run stops cleanly before its end
    assert out.getvalue().splitlines()[-1] == "listen: 12.8/100 s of audio (13%), stopped after 0:00:30"


def test_the_total_may_be_told_with_the_progress():
    console, _ = plain()
    progress = ProgressReporter("work", console=console)
    progress(2, 8)
    assert progress.task.total == 8 and progress.line() == "work: 2/8 (25%), 0:00:00 elapsed"
    progress.close()
