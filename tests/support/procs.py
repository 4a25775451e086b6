"""Finding the processes of a job from a test: every live process with its command line."""

from __future__ import annotations

import os
from collections.abc import Iterator


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every other process this test can see; processes that end meanwhile are skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                yield int(entry), f.read().split(b"\0")
        except OSError:
            continue
