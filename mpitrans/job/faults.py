"""Test hooks for failure-path tests: kill a rank at a named stage, or slow every round down.

`MPITRANS_FAULT=RANK:STAGE` SIGKILLs that rank when it reaches STAGE (`after-plan`, `mid-transfer`,
`mid-write`); `MPITRANS_TEST_ROUND_DELAY=SECONDS` sleeps after every round, so interruption tests can
hit a multi-second run at random points on any machine. Both are inert unless set.
"""

from __future__ import annotations

import os
import signal
import sys
import time

FAULT_STAGES = ("after-plan", "mid-transfer", "mid-write")
_ROUND_DELAY = float(os.environ.get("MPITRANS_TEST_ROUND_DELAY", "0") or 0)


def fault_point(stage: str, rank: int) -> None:
    spec = os.environ.get("MPITRANS_FAULT")
    if not spec:
        return
    want_rank, _, want_stage = spec.partition(":")
    if want_stage == stage and want_rank.strip() == str(rank):
        sys.stderr.write(f"[mpitrans r{rank}] MPITRANS_FAULT: killing this rank at {stage}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def round_delay() -> None:
    if _ROUND_DELAY:
        time.sleep(_ROUND_DELAY)
