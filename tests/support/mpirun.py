"""Launching real `mpirun` jobs from tests (as root, oversubscribed, loopback only, with a time limit)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MPIRUN = VENV_BIN / "mpirun"
HOST_WRAPPER = Path(__file__).with_name("host_wrapper.sh")


def mpi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl_tcp_if_include": "lo",
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "GLOG_v": "3",
    })
    env.update(extra or {})
    return env


def mpirun(n: int, args: Sequence[str], *, mca: Sequence[str] = (), wrapper: Sequence[str] = (),
           env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `python -m mpitrans ARGS` on `n` processes; the result carries stdout/stderr as text."""
    cmd = [str(MPIRUN), "-n", str(n), "--oversubscribe"]
    for i in range(0, len(mca), 2):
        cmd += ["--mca", mca[i], mca[i + 1]]
    cmd += [*wrapper, sys.executable, "-m", "mpitrans", *args]
    return subprocess.run(cmd, env=mpi_env(env), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def mpirun_script(n: int, argv: Sequence[str], *, env: dict[str, str] | None = None,
                  timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `python ARGV` (a script and its arguments) on `n` processes."""
    cmd = [str(MPIRUN), "-n", str(n), "--oversubscribe", sys.executable, *argv]
    return subprocess.run(cmd, env=mpi_env(env), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def python_m(args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | str = REPO,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m mpitrans ARGS` in one plain process, without any MPI launcher."""
    full = {k: v for k, v in mpi_env(env).items() if not k.startswith(("OMPI_COMM_WORLD", "PMIX_", "PMI_"))}
    return subprocess.run([sys.executable, "-m", "mpitrans", *args], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def single(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 240,
           max_address_space: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m mpitrans ARGS` as one process without mpirun (the other launch path users take).

    `max_address_space` (bytes) caps the process's memory, so a test of a former blow-up cannot take the
    machine down if it regresses."""
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_address_space, max_address_space))

    return subprocess.run([sys.executable, "-m", "mpitrans", *args], env=mpi_env(env), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, preexec_fn=limit if max_address_space else None)
