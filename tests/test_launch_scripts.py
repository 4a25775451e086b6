"""launch/run_*.sh: the mpirun lines they build (dry run) and one real local launch each."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
VENV = REPO / ".venv"
LOCAL_TABLE = REPO / "rank_tables" / "hccl_8p_01234567_127.0.0.1.json"
CLUSTER_TABLE = REPO / "rank_tables" / "hccl_16p_2s_192.168.1.196_192.168.1.197.json"
SCRIPTS = ("run_local.sh", "run_hostfile.sh", "run_rank_table.sh")


def run(script: str, *args: str, dry: bool = True, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("MPITRANS_DRY_RUN", "MPITRANS_SERVER_ID",
                                                             "MPITRANS_NP", "MPIRUN_ARGS")}
    full["GLOG_v"] = "3"
    if dry:
        full["MPITRANS_DRY_RUN"] = "1"
    full.update(env or {})
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=full,
                          timeout=timeout, cwd=REPO)


def command(result: subprocess.CompletedProcess) -> list[str]:
    """The dry run's command line (the last stdout line), split like the shell would."""
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_and_documented(script):
    text = (LAUNCH / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert 'ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"' in text
    result = run(script, "--help", dry=False)
    assert result.returncode == 0 and f"launch/{script}" in result.stdout
    assert "MPITRANS_DRY_RUN" in result.stdout
    missing = run(script, dry=False)
    assert missing.returncode == 2 and "bash launch/" in missing.stderr


def test_run_local_line():
    cmd = command(run("run_local.sh", "3", "--src-checkpoint", "a b", "--prefix", "p_"))
    assert cmd == [str(VENV / "bin/mpirun"), "-n", "3", "--oversubscribe", "--bind-to", "none",
                   str(VENV / "bin/python"), "-m", "mpitrans", "--src-checkpoint", "a b", "--prefix", "p_"]
    extra = command(run("run_local.sh", "2", env={"MPIRUN_ARGS": "--mca btl self,tcp"}))
    assert extra[6:9] == ["--mca", "btl", "self,tcp"]
    bad = run("run_local.sh", "two", "--help")
    assert bad.returncode == 2 and "positive process count" in bad.stderr


def test_run_hostfile_line(tmp_path):
    hostfile = REPO / "hostfiles" / "two_nodes_8.hostfile"
    cmd = command(run("run_hostfile.sh", str(hostfile), "--config", "t.yaml"))
    assert cmd[:6] == [str(VENV / "bin/mpirun"), "--prefix", str(VENV), "-n", "16", "-hostfile"]
    assert cmd[6] == str(hostfile)
    xs = [cmd[i + 1] for i, tok in enumerate(cmd) if tok == "-x"]
    assert xs == ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH"]
    assert cmd[-5:] == [str(VENV / "bin/python"), "-m", "mpitrans", "--config", "t.yaml"]
    assert "--oversubscribe" not in cmd
    # Slot counting as Open MPI does: "host slots=K" (spaces around "=" too, cpu=/count= alike, max_slots
    # not a slot count), bare host = 1, comments and blank lines; an IPv6 address stays one host.
    mixed = tmp_path / "hosts"
    mixed.write_text("# comment\nnode1 slots=4  # four\n  node2 slots = 3 max_slots=8\n\nnode3\nfd00::2\n"
                     "node4 count=2\n")
    assert command(run("run_hostfile.sh", str(mixed)))[4] == "11"
    assert command(run("run_hostfile.sh", str(mixed), env={"MPITRANS_NP": "2"}))[4] == "2"
    (tmp_path / "empty").write_text("# nobody\n")
    assert run("run_hostfile.sh", str(tmp_path / "empty")).returncode == 2
    assert run("run_hostfile.sh", str(tmp_path / "absent")).returncode == 2


@pytest.mark.parametrize(("text", "words"), [
    ("node1 slots=4\r\nnode2 slots=4\r\n", [":1: Windows line ends (CRLF)", "sed -i 's/\\r$//'"]),
    ("node1 slots=4\nnode2:3\n", [':2: "node2:3" is MPICH hostfile syntax', 'write "node2 slots=3"']),
    ("node1 slots=four\n", [':1: "slots=four": the slot count must be a whole number']),
])
def test_run_hostfile_refuses_what_open_mpi_cannot_read(tmp_path, text, words):
    """Open MPI rejects CRLF lines and reads "host:K" as a host name; they used to be counted as slots."""
    hostfile = tmp_path / "hosts"
    hostfile.write_bytes(text.encode())
    result = run("run_hostfile.sh", str(hostfile))
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith(f"run_hostfile.sh: {hostfile}:"), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_run_rank_table_local_table_launches_locally():
    result = run("run_rank_table.sh", str(LOCAL_TABLE), "--config", "t.yaml")
    cmd = command(result)
    assert cmd == [str(VENV / "bin/mpirun"), "-n", "8", "--oversubscribe", "--bind-to", "none",
                   str(VENV / "bin/python"), "-m", "mpitrans", "--config", "t.yaml",
                   "--rank-table", str(LOCAL_TABLE)]
    assert "is this machine" in result.stderr


def test_run_rank_table_cluster_table_uses_a_hostfile():
    result = run("run_rank_table.sh", os.path.relpath(CLUSTER_TABLE, REPO), "--quiet")
    cmd = command(result)
    assert cmd[:5] == [str(VENV / "bin/mpirun"), "--prefix", str(VENV), "-n", "16"]
    assert cmd[5] == "-hostfile"
    assert cmd[-4:] == ["mpitrans", "--quiet", "--rank-table", str(CLUSTER_TABLE)]
    assert "# hostfile: 192.168.1.196 slots=8\n# hostfile: 192.168.1.197 slots=8\n" in result.stdout
    # Pretending to be both servers makes the same table local.
    both = run("run_rank_table.sh", str(CLUSTER_TABLE),
               env={"MPITRANS_SERVER_ID": "192.168.1.196,192.168.1.197"})
    assert command(both)[1:4] == ["-n", "16", "--oversubscribe"]
    bad = run("run_rank_table.sh", str(REPO / "hostfiles" / "README.md"))
    assert bad.returncode != 0 and "not valid JSON" in bad.stderr


@pytest.mark.mpi
def test_run_local_real_mpirun_help():
    result = run("run_local.sh", "2", "--help", dry=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("usage: python -m mpitrans") == 2
    assert "+ " + str(VENV / "bin/mpirun") + " -n 2 --oversubscribe" in result.stderr


@pytest.mark.mpi
def test_run_rank_table_real_local_launch(tmp_path):
    # A 2-device table whose server is this machine: two local processes. --help exits before the
    # transform parser would look at --rank-table, so this does not depend on the engine.
    gen = subprocess.run([sys.executable, "-m", "mpitrans.cluster", "generate", "--device-num", "[0,2)",
                          "--server-ip", "127.0.0.1", "--device-ips", "10.0.0.1,10.0.0.2",
                          "-o", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert gen.returncode == 0, gen.stderr
    table = tmp_path / "hccl_2p_01_127.0.0.1.json"
    result = run("run_rank_table.sh", str(table), "--help", dry=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("usage: python -m mpitrans") == 2
    assert f"--rank-table {table}" in result.stderr
