"""Progress of the whole job, shown by rank 0.

Every rank computes the same global schedule, so rank 0 knows how many bytes all writers have assembled
once a round is done; ranks advance through rounds together (each waits for the data it needs), which
makes rank 0's round a fair measure of the job. On a terminal it redraws one line; otherwise (a batch
log) it prints a line every few seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}" if n >= 2**28 else f"{n / 2**20:.1f}M"


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.start = time.perf_counter()
        self.last = 0.0
        self.done = 0

    def update(self, done: int, final: bool = False) -> None:
        self.done = done
        now = time.perf_counter()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        frac = min(done / self.total, 1.0)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
        width = 28
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        text = (f"[mpitrans] [{bar}] {frac * 100:5.1f}% {_gib(done)}/{_gib(self.total)} GiB "
                f"{rate / 1e6:7.1f} MB/s ETA {eta_s}")
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
