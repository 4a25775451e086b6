"""Signals during a job raise one clean error, and a rank stuck inside MPI is still taken down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mpitrans.job.guard import Interrupted, JobGuard
from tests.support.mpirun import MPIRUN, REPO, mpi_env
from tests.support.procs import command_lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_raises_interrupted_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    aborted = []
    with pytest.raises(Interrupted) as err, JobGuard(aborted.append, 0, grace=5):
        os.kill(os.getpid(), sig)
        time.sleep(5)
    assert err.value.signum == sig and signal.Signals(sig).name in str(err.value)
    assert signal.getsignal(sig) is before and aborted == []


def test_guard_is_inert_outside_the_main_thread():
    import threading

    box = []
    th = threading.Thread(target=lambda: box.append(JobGuard(lambda c: None, 0).__enter__()._active))
    th.start()
    th.join()
    assert box == [False]


@pytest.mark.mpi
def test_rank_blocked_inside_mpi_is_aborted_on_sigint(tmp_path):
    """Rank 0 waits in MPI for a message that never comes; SIGINT must still end the job within seconds."""
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import numpy as np
        from mpi4py import MPI
        from mpitrans.job.guard import JobGuard
        comm = MPI.COMM_WORLD
        with JobGuard(comm.Abort, comm.rank, watch_parent=True, grace=0.5):
            if comm.rank == 0:
                import os
                print("waiting", os.getpid(), flush=True)
                comm.Recv([np.zeros(1), MPI.DOUBLE], source=1)
            else:
                time.sleep(600)
    """))
    proc = subprocess.Popen([str(MPIRUN), "-n", "2", "--oversubscribe", sys.executable, str(script)],
                            env=mpi_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        word, pid = proc.stdout.readline().split()
        assert word == "waiting"
        time.sleep(0.5)
        os.kill(int(pid), signal.SIGINT)
        start = time.monotonic()
        proc.wait(timeout=20)
        assert time.monotonic() - start < 10
        err = proc.stderr.read()
        assert proc.returncode != 0
        assert "rank 0: interrupted by SIGINT while waiting on other processes" in err
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    assert not _children_running(script), "ranks survived the job"


def _children_running(script) -> list[int]:
    return [pid for pid, cmd in command_lines()
            if str(script).encode() in cmd and not any(b"mpirun" in c or b"prte" in c for c in cmd[:1])]
