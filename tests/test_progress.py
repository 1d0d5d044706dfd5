"""The live progress line: finished of total, statuses so far, elapsed; off unless on a terminal."""

from __future__ import annotations

import io

from opsagent.progress import CaseProgress, progress_wanted


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_finished_of_total_and_the_statuses(monkeypatch):
    out = _Terminal()
    with CaseProgress(4, "demo", enabled=True, stream=out) as bar:
        bar.show({"a": "resolved", "b": "planning", "c": "received", "d": "escalated"},
                 lambda s: s in ("resolved", "escalated"))
        assert bar.finished == 2
        bar.show({"a": "resolved", "b": "resolved", "c": "awaiting_approval", "d": "escalated"},
                 lambda s: s != "planning")
    text = out.getvalue()
    assert "demo" in text and "2/4" in text and "4/4" in text
    assert "planning=1" in text and "awaiting_approval=1" in text and "00:00" in text  # elapsed


def test_progress_counts_finished_cases_one_by_one():
    out = _Terminal()
    with CaseProgress(3, "eval", enabled=True, stream=out) as bar:
        bar.advance("resolved", "eval base")
        bar.advance("escalated")
    assert "eval base" in out.getvalue() and "2/3" in out.getvalue() and "escalated=1" in out.getvalue()


def test_progress_is_off_without_a_terminal_or_when_asked(monkeypatch):
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert progress_wanted(False, _Terminal()) is True
    assert progress_wanted(True, _Terminal()) is False  # --no-progress
    assert progress_wanted(False, piped) is False
    monkeypatch.setattr("sys.stdout", piped)  # output to a file or a pipe
    assert progress_wanted(False, _Terminal()) is False
    with CaseProgress(2, "demo", enabled=False, stream=piped) as bar:
        bar.advance("resolved")
        bar.show({"a": "resolved"}, lambda s: True)
    assert piped.getvalue() == "" and bar.finished == 1
