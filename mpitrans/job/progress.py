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


def amounts(done: float, total: float) -> str:
    """`done/total unit`, both in the unit that suits the total (MiB below 256 MiB, else GiB), so that
    the two numbers compare at a glance and the unit is written once."""
    if total >= 2**28:
        return f"{done / 2**30:.2f}/{total / 2**30:.2f} GiB"
    return f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB"


class Progress:
    """A progress bar (terminal) or progress lines (log) for `total` bytes."""

    def __init__(self, total: int, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.start = time.perf_counter()
        self.last = float("-inf")  # the first update is always shown
        self.done = 0
        self.shown: int | None = None  # `done` of the last line printed
        self.finished = False

    def update(self, done: int, final: bool = False) -> None:
        """Show `done` bytes of `total`: at most every `interval` seconds, and once more with `final`
        unless the last line already showed the same amount (a log then gets one 100% line, not two).
        Nothing is shown after the final update."""
        self.done = done
        if self.finished:
            return
        now = time.perf_counter()
        if final:
            self.finished = True
            if self.shown == done:
                if self.tty:  # the bar is already drawn: end its line
                    self.stream.write("\n")
                    self.stream.flush()
                return
        elif now - self.last < self.interval:
            return
        self.last = now
        self.shown = done
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        frac = min(done / self.total, 1.0)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
        width = 28
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        text = (f"[mpitrans] [{bar}] {frac * 100:5.1f}% {amounts(done, self.total)} "
                f"{rate / 1e6:7.1f} MB/s ETA {eta_s}")
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
