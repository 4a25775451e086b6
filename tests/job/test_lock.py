"""The output directory's job lock: one live job at a time, stale locks of dead jobs taken over."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest

from mpitrans.job.lock import LOCK_NAME, JobLock, JobLockedError


def test_acquire_and_release(tmp_path):
    lock = JobLock(str(tmp_path / "out"), "job-a")
    lock.acquire()
    info = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
    assert info["job"] == "job-a" and info["pid"] == os.getpid() and info["host"]
    lock.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_processes_of_the_same_job_share_the_lock(tmp_path):
    first, second = JobLock(str(tmp_path), "job-a"), JobLock(str(tmp_path), "job-a")
    first.acquire()
    second.acquire(wait=0)
    second.release()  # did not create it: leaves it alone
    assert (tmp_path / LOCK_NAME).exists()
    first.release()


def test_a_live_job_is_refused_with_its_host_pid_and_start(tmp_path):
    holder = JobLock(str(tmp_path), "job-a")
    holder.acquire()
    try:
        with pytest.raises(JobLockedError) as err:
            JobLock(str(tmp_path), "job-b").acquire(wait=0.3)
        msg = str(err.value)
        assert f"pid {os.getpid()}" in msg and "started" in msg and "another mpitrans job" in msg
        assert str(tmp_path) in msg
    finally:
        holder.release()


def test_a_lock_held_by_another_process_is_refused(tmp_path):
    code = f"""
import fcntl, json, os, sys, time
fd = os.open({str(tmp_path / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({{"job": "other", "host": "h1", "pid": os.getpid(), "started": 0}}).encode())
print("ready", flush=True)
sys.stdin.read()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(JobLockedError, match=f"host h1, pid {proc.pid}"):
            JobLock(str(tmp_path), "mine").acquire(wait=0.2)
    finally:
        proc.communicate("")
    # Its holder is gone: the lock is stale now and gets taken over, with a note of whose it was.
    lock = JobLock(str(tmp_path), "mine")
    lock.acquire(wait=0)
    assert lock.stale is not None and f"pid {proc.pid}" in lock.stale
    lock.release()


def test_a_stale_lock_left_by_a_killed_job_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"job": "dead", "host": "h", "pid": 999999, "started": 1.0}))
    lock = JobLock(str(tmp_path), "new")
    lock.acquire(wait=0)
    assert "pid 999999" in (lock.stale or "")
    assert json.loads((tmp_path / LOCK_NAME).read_text())["job"] == "new"
    # and the new holder really holds it
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    lock.release()
