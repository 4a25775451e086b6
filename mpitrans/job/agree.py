"""Agreement: a phase that can fail on bad input ends with every rank knowing the same outcome.

Under MPI a rank that raises while its peers wait in a collective leaves them waiting forever. So every
phase that can fail on user input runs through `agree`: each rank runs its part, the ranks exchange
their error messages (empty when fine), and either all continue or all raise the same `JobError`. A
failure that cannot be agreed on (one rank, while bytes move) goes through `fail_job`, which ends the
whole job at once.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

from mpitrans.errors import MpitransError
from mpitrans.job.guard import Interrupted, report_once
from mpitrans.job.transport import Transport

T = TypeVar("T")


class JobError(MpitransError):
    """An error some rank hit, reported identically on every rank."""


def agree(t: Transport, fn: Callable[[], T]) -> T:
    """Run `fn`; if it failed on any rank, raise the lowest rank's message on every rank."""
    result, err = None, ""
    try:
        result = fn()
    except MpitransError as exc:
        err = str(exc)
    except OSError as exc:
        err = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    errors = t.allgather_bytes(err.encode())
    failed = [(r, msg) for r, msg in enumerate(errors) if msg]
    if failed:
        r, msg = failed[0]
        same_everywhere = len(failed) == t.size and all(m == msg for _, m in failed)
        prefix = f"rank {r}: " if t.size > 1 and not same_everywhere else ""
        raise JobError(prefix + msg.decode())
    return result  # type: ignore[return-value]


def fail_job(t: Transport, exc: BaseException) -> None:
    """Report this rank's failure once and abort every process of the job (no peer is left waiting)."""
    if isinstance(exc, MpitransError):
        report_once(f"mpitrans: error on rank {t.rank}: {exc}")
    else:
        traceback.print_exception(exc)
        report_once(f"mpitrans: rank {t.rank} failed: {exc!r}; aborting the job")
    t.abort(128 + exc.signum if isinstance(exc, Interrupted) else 1)
