"""Live progress of long runs (`opsagent demo`, `eval`, `bench`): cases finished of the total, the
statuses so far and the time elapsed, as one tqdm line on stderr.

Shown only when both stdout and stderr are terminals and `--no-progress` was not given, so logs,
pipes and CI output stay clean. Callers either report each finished case (`advance`) or hand
over every case's current status after a poll (`show`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TextIO


def progress_wanted(no_progress: bool = False, stream: TextIO | None = None) -> bool:
    """Whether to draw progress: not switched off, and stdout and the stream are terminals."""
    stream = stream or sys.stderr
    return not no_progress and _isatty(sys.stdout) and _isatty(stream)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class CaseProgress:
    """A progress line over `total` cases; a no-op when `enabled` is False."""

    def __init__(self, total: int, label: str, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.statuses: Counter[str] = Counter()
        self.finished = 0
        self._bar = None
        if enabled:
            from tqdm import tqdm

            stream = stream or sys.stderr
            # a pseudo-terminal may report a 0 x 0 size (tqdm would then hide the bar): use defaults
            sized = _columns(stream) > 0
            fallback = shutil.get_terminal_size()
            self._bar = tqdm(total=total, desc=label, unit="case", file=stream, leave=True,
                             dynamic_ncols=sized, ncols=None if sized else fallback.columns,
                             nrows=None if sized else fallback.lines)

    def advance(self, status: str, label: str | None = None) -> None:
        """One more case finished, with `status` (and, optionally, a new label, e.g. the config)."""
        self.statuses[status] += 1
        self.finished += 1
        if self._bar is not None:
            if label is not None:
                self._bar.set_description(label, refresh=False)
            self._bar.set_postfix(dict(sorted(self.statuses.items())), refresh=False)
            self._bar.update(1)

    def show(self, statuses: Mapping[str, str], done: Callable[[str], bool]) -> None:
        """Every case's current status (case id -> status); `done` tells a finished status."""
        self.statuses = Counter(statuses.values())
        finished = sum(n for status, n in self.statuses.items() if done(status))
        if self._bar is not None:
            self._bar.n = finished  # may go down: a held case that resumes is running again
            self._bar.set_postfix(dict(sorted(self.statuses.items())), refresh=True)
        self.finished = finished

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "CaseProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
