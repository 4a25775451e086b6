"""One failure path for a running job: signals and lost parents end the whole job, never a hang.

Under MPI a rank that stops while its peers sit in a collective or a `Waitall` leaves them spinning
forever, and Python only runs a signal handler when the main thread returns to the interpreter, which
it never does while it is blocked inside MPI. So while a job runs:

* SIGINT and SIGTERM raise `Interrupted` in the main thread, so ordinary unwinding removes temporary
  files and publishes nothing, and the caller ends the job (MPI `Abort`);
* a watcher thread learns of the same signal through `signal.set_wakeup_fd` (written by the C-level
  handler even while the main thread is stuck in MPI) and, if the main thread has not ended the job
  within a grace period, reports once and aborts the job itself;
* under a launcher, the watcher also notices when the launcher (our parent process) is gone, and exits
  (a plain `nohup` run is left alone: losing its shell is no reason to stop).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from mpitrans.errors import MpitransError

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(MpitransError):
    """The job was told to stop (Ctrl-C, SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; nothing incomplete was published")


_report_lock = threading.Lock()
_reported = False


def report_once(message: str) -> bool:
    """Print `message` unless this process already reported its failure; True when printed."""
    global _reported
    with _report_lock:
        if _reported:
            return False
        _reported = True
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    return True


class JobGuard:
    """Context manager installed around a job in the main thread (a no-op elsewhere)."""

    def __init__(self, abort: Callable[[int], None], rank: int, *, watch_parent: bool = False,
                 grace: float = 0.5, poll: float = 0.5) -> None:
        self.abort = abort
        self.rank = rank
        self.watch_parent = watch_parent
        self.grace = grace
        self.poll = poll
        self._active = False
        self._done = threading.Event()
        self._old: dict[int, object] = {}
        self._old_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> JobGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._active = True
        r, w = os.pipe()
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        self._pipe = (r, w)
        for sig in HANDLED:
            self._old[sig] = signal.signal(sig, self._raise)
        self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        parent = os.getppid() if self.watch_parent else 0
        self._thread = threading.Thread(target=self._watch, args=(parent,), name="mpitrans-guard",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        self._done.set()
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe[1], b"\0")  # wake the watcher now rather than at its next poll
        if self._thread is not None:
            self._thread.join(timeout=2 * self.poll + 1)
        signal.set_wakeup_fd(self._old_fd)
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
        self._active = False

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    def _watch(self, parent: int) -> None:
        import select

        assert self._pipe is not None
        r = self._pipe[0]
        signalled_at: float | None = None
        signum = 0
        while not self._done.is_set():
            ready, _, _ = select.select([r], [], [], self.poll)
            if ready:
                try:
                    data = os.read(r, 64)
                except OSError:
                    data = b""
                for b in data:
                    if b in HANDLED and signalled_at is None:
                        signalled_at, signum = time.monotonic(), b
            if self._done.is_set():
                return
            if signalled_at is not None and time.monotonic() - signalled_at >= self.grace:
                name = signal.Signals(signum).name
                report_once(f"mpitrans: rank {self.rank}: interrupted by {name} while waiting on other "
                            f"processes; aborting the job (nothing incomplete was published)")
                self.abort(128 + signum)
                return
            if parent > 1 and os.getppid() != parent:
                report_once(f"mpitrans: rank {self.rank}: the launcher (pid {parent}) is gone; exiting")
                os._exit(1)
