"""An advisory lock on an output directory, so two jobs never write (or clean up) the same targets.

A second job started on the same `--dst-checkpoint` while the first still runs would delete the first
job's temporary files and race it for the final names. Each process that writes into the directory
takes `DIR/.mpitrans.lock` before anything else happens there. The file names the job (a random id
that every rank of one job shares), the host, the pid and the start time, so a refused user learns who
holds it. Liveness comes from `flock` on the same file: the kernel drops it when the holder dies, so a
lock left behind by a killed job is recognised as stale, reported, and taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime

from mpitrans.errors import MpitransError

LOCK_NAME = ".mpitrans.lock"


class JobLockedError(MpitransError):
    """Another live job holds the output directory."""


def _describe(info: dict) -> str:
    started = info.get("started")
    when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if started else "?"
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {when}"


class JobLock:
    """Held by every process of one job that writes into `folder`; released by whoever created it."""

    def __init__(self, folder: str, job_id: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.job_id = job_id
        self._fd: int | None = None  # open (and flocked) only by the process that created the file
        self.stale: str | None = None  # description of a dead job's lock that was taken over

    def acquire(self, wait: float = 2.0) -> None:
        """Take the lock or raise `JobLockedError` naming the live holder. A holder is given `wait`
        seconds to go away first: the processes of a job that just failed may still be exiting."""
        os.makedirs(self.folder, exist_ok=True)
        deadline = time.monotonic() + wait
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    if self._join_existing():
                        return
                except JobLockedError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._own(fd)
            return

    def _join_existing(self) -> bool:
        """True when the lock is ours to use (our own job's, or a dead job's taken over); retry on False."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False  # released meanwhile: try to create it again
        try:
            info = self._read(fd)
            for _ in range(20):  # being created right now, or an empty leftover: look again shortly
                if info is not None:
                    break
                time.sleep(0.005)
                info = self._read(fd)
            if info is not None and info.get("job") == self.job_id:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                info = self._read(fd) or info or {}
                if info.get("job") == self.job_id:  # a peer of this job took over a stale lock first
                    return True
                raise JobLockedError(
                    f"{self.folder} is in use by another mpitrans job ({_describe(info)}; lock file "
                    f"{self.path}); wait for it to finish or choose another --dst-checkpoint"
                ) from None
            if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return False  # replaced while we looked
            self.stale = _describe(info or {})
            self._own(fd)
            fd = -1
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _read(fd: int) -> dict | None:
        data = os.pread(fd, 4096, 0)
        try:
            info = json.loads(data.decode())
        except (ValueError, UnicodeDecodeError):
            return None
        return info if isinstance(info, dict) else None

    def _own(self, fd: int) -> None:
        info = {"job": self.job_id, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock if this process created it; others of the job just forget it."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
