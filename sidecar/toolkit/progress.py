"""A tiny progress line on stderr (no tqdm): ``label  done/total  pct  rate/s  eta``.

On a terminal it redraws one line (``\\r``) at most every ``interval_s``; otherwise (CI logs, pipes)
it prints a plain line at every 10 % step, so logs stay short. Disabled below ``min_total`` items.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        total: int,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        min_total: int = 100,
        interval_s: float = 0.1,
    ) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total >= min_total
        self.interval_s = interval_s
        self.done = 0
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = 0
        try:
            self._tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self._tty = False

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
        return f"{self.label}  {self.done}/{self.total}  {pct:5.1f}%  {rate:.0f}/s  eta {eta_s}"

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._tty:
            now = time.monotonic()
            if now - self._last_draw >= self.interval_s or self.done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        else:
            decile = (10 * self.done) // self.total if self.total else 10
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
