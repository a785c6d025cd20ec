"""A one-line progress display on stderr (terminals only): entries, entries/s, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Call :meth:`update` often; it redraws at most every ``interval`` seconds.

    ``fraction`` (0..1, e.g. bytes read of a file) gives a percentage and an ETA; without
    it only the count and the rate are shown. Disabled (no output at all) when the stream
    is not a terminal, so piped or captured output stays clean.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None,
                 interval: float = 0.25) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self._start = time.monotonic()
        self._last = 0.0
        self._shown = False

    def update(self, entries: int, fraction: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        rate = entries / elapsed
        text = f"\raudit: {entries:,} entries  {rate:,.0f}/s"
        if fraction is not None and 0 < fraction <= 1:
            eta = elapsed * (1 - fraction) / fraction
            text += f"  {fraction * 100:5.1f}%  ETA {_clock(eta)}"
        self.stream.write(text + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
