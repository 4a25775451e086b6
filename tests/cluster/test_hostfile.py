"""Hostfiles from rank tables: server ids a launcher would misread are refused; the mpirun line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpitrans.cli import rank_table as cli
from mpitrans.cluster.hostfile import hostfile, mpirun_command
from mpitrans.cluster.rank_table import RankTableError, load
from tests.support.rank_tables import EXAMPLES


def _table_with_server_id(tmp_path: Path, server_id: str) -> Path:
    data = json.loads((EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json").read_text())
    data["server_list"][1]["server_id"] = server_id
    path = tmp_path / "table.json"
    path.write_text(json.dumps(data))
    return path


def test_hostfile_refuses_server_ids_a_launcher_would_misread(tmp_path, capsys):
    for server_id in ("node 1", "node1;rm -rf x", "node1\tb", "node#1", '"node1"', "node1\n"):
        path = _table_with_server_id(tmp_path, server_id)
        table = load(path)  # a valid rank table otherwise (HCCL does not look at server_id's characters)
        with pytest.raises(RankTableError, match=r"server_list\[1\]\.server_id .* cannot go into a hostfile"):
            hostfile(table)
        assert cli.main(["hostfile", str(path), "-o", str(tmp_path / "hosts")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mpitrans: error: ") and repr(server_id) in err and err.count("\n") == 1
        assert not (tmp_path / "hosts").exists()
    # what hostfiles do hold is kept as is
    for server_id in ("10.0.0.7", "node-1.cluster_a", "fd00::2", "fe80::1%eth0", "::1", "alice@node1"):
        table = load(_table_with_server_id(tmp_path, server_id))
        assert hostfile(table).splitlines()[1] == f"{server_id} slots=8"


def test_mpirun_line_quotes_the_hostfile_and_formats_are_checked():
    table = load(EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json")
    assert mpirun_command(table, "my hosts") == "mpirun -n 16 -hostfile 'my hosts'"
    assert mpirun_command(table, "my hosts", "mpich") == "mpiexec -n 16 -f 'my hosts'"
    with pytest.raises(RankTableError, match="hostfile format 'slurm': expected openmpi or mpich"):
        hostfile(table, "slurm")
