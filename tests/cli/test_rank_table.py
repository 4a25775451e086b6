"""`python -m mpitrans rank-table` (and `python -m mpitrans.cluster`): generate, merge, hostfile, show,
is-local; one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mpitrans.cli import rank_table as cli
from mpitrans.cluster.rank_table import load
from tests.support.rank_tables import EXAMPLES, REPO, SECOND_IPS, SECOND_SERVER, SEED_IPS, SEED_SERVER, hccn_conf


def test_cli_generate_merge_hostfile_show(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    conf = hccn_conf(tmp_path, SEED_IPS)
    assert cli.main(["generate", "--device_num", "[0,8]", "--server_ip", SEED_SERVER, "--hccn-conf", conf,
                     "--hccn-tool", "none"]) == 0
    out = capsys.readouterr().out
    assert "rank_id:7, device_id:7, device_ip:192.168.103.100" in out
    assert (tmp_path / "hccl_8p_01234567_192.168.1.196.json").exists()
    assert cli.main(["generate", "--server-ip", SECOND_SERVER, "--device-ips", ",".join(SECOND_IPS)]) == 0
    capsys.readouterr()
    assert cli.main(["merge", "hccl_8p_01234567_192.168.1.197.json", "hccl_8p_01234567_192.168.1.196.json",
                     "--sort-by-ip"]) == 0
    assert "into " + str(tmp_path / "hccl_2s_16p.json") in capsys.readouterr().out
    assert load("hccl_2s_16p.json").servers[0].server_id == SEED_SERVER
    assert cli.main(["hostfile", "hccl_2s_16p.json", "-o", "hosts"]) == 0
    assert capsys.readouterr().out.strip() == "mpirun -n 16 -hostfile hosts"
    assert (tmp_path / "hosts").read_text() == "192.168.1.196 slots=8\n192.168.1.197 slots=8\n"
    assert cli.main(["hostfile", "hccl_2s_16p.json", "--format", "mpich"]) == 0
    assert capsys.readouterr().out.startswith("192.168.1.196:8\n192.168.1.197:8\n# mpiexec -n 16 -f")
    assert cli.main(["show", "hccl_2s_16p.json"]) == 0
    assert "ranks 8-15" in capsys.readouterr().out
    assert cli.main(["is-local", "hccl_2s_16p.json"]) == 1
    assert cli.main(["is-local", str(EXAMPLES / "hccl_8p_01234567_127.0.0.1.json")]) == 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    assert cli.main(["show", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpitrans: error: ") and "missing version" in err and err.count("\n") == 1
    assert cli.main(["merge", str(tmp_path / "absent.json")]) == 1
    capsys.readouterr()
    assert cli.main(["shw", str(tmp_path / "bad.json")]) == 2  # a usage error too: one line, no usage text
    err = capsys.readouterr().err
    assert err.startswith("mpitrans: error: argument") and "invalid choice: 'shw'" in err and err.count("\n") == 1
    assert cli.main(["--debug", "show", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.endswith("missing version\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_python_m_mpitrans_cluster_is_the_same_command():
    """`python -m mpitrans.cluster` is what launch/run_rank_table.sh runs before mpirun."""
    cluster = EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    shown = subprocess.run([sys.executable, "-m", "mpitrans.cluster", "show", str(cluster)], capture_output=True,
                           text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "2 server(s), 16 rank(s)" in shown.stdout
    wrong = subprocess.run([sys.executable, "-m", "mpitrans.cluster", "shw"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.startswith("mpitrans: error: ") and wrong.stderr.count("\n") == 1
