"""Placement: each target rank written by an MPI process on the server that holds it in the table."""

from __future__ import annotations

import json

import pytest

from mpitrans.cluster.merge import merge
from mpitrans.cluster.placement import all_local, job_placement, local_host_ids, rank_table_placement
from mpitrans.cluster.probe import generate
from mpitrans.cluster.rank_table import Device, RankTable, RankTableError, Server


def _table(servers: dict[str, int]) -> RankTable:
    rank, out, n = 0, [], 0
    for sid, count in servers.items():
        devs = []
        for i in range(count):
            devs.append(Device(str(i), f"10.99.{n}.{i}", rank))
            rank += 1
        n += 1
        out.append(Server(sid, devs))
    return RankTable(out)


def test_placement_two_servers_four_ranks_each():
    table = _table({"10.0.0.1": 4, "10.0.0.2": 4})
    # MPI ranks 0,2 on node A (known by IP), 1,3 on node B (known by name and IP).
    a = {"nodea", "nodea.cluster", "10.0.0.1", "127.0.0.1"}
    b = {"NodeB", "10.0.0.2"}
    place = rank_table_placement(table, [a, b, a, b])
    assert place(range(8), 4) == {0: 0, 1: 2, 2: 0, 3: 2, 4: 1, 5: 3, 6: 1, 7: 3}
    # One MPI rank per server.
    one_each = rank_table_placement(table, [b, a])
    assert one_each(list(range(8)), 2) == {t: (1 if t < 4 else 0) for t in range(8)}
    # Eight MPI ranks, one per device, hostfile order: rank i writes target i.
    place8 = rank_table_placement(table, [a] * 4 + [b] * 4)
    assert place8(range(8), 8) == {t: t for t in range(8)}


def test_placement_by_host_name_and_balanced_when_servers_share_ranks():
    table = _table({"localhost": 4, "127.0.0.1": 4})
    me = {"localhost", "127.0.0.1", "vm"}
    where = rank_table_placement(table, [me, me])(range(8), 2)
    assert sorted(where) == list(range(8))
    assert sorted(where.values()).count(0) == 4 and sorted(where.values()).count(1) == 4
    named = _table({"NodeB.example": 2})
    assert rank_table_placement(named, [{"x"}, {"nodeb.example"}])([0, 1], 2) == {0: 1, 1: 1}


def test_placement_missing_server_is_named():
    table = _table({"10.0.0.1": 4, "10.0.0.2": 4})
    place = rank_table_placement(table, [{"10.0.0.1", "nodea"}, {"10.0.0.1", "nodea"}])
    expected = r"no MPI rank runs on server 10\.0\.0\.2 \(table ranks 4-7\)"
    with pytest.raises(RankTableError, match=expected) as err:
        place(range(8), 2)
    assert "MPITRANS_SERVER_ID" in str(err.value) and "rank 0: 10.0.0.1, nodea" in str(err.value)


def test_placement_rank_count_mismatch():
    table = _table({"10.0.0.1": 4, "10.0.0.2": 4})
    place = rank_table_placement(table, [{"10.0.0.1", "10.0.0.2"}])
    with pytest.raises(RankTableError, match="has 8 rank.* destination layout has 4 target"):
        place(range(4), 1)
    with pytest.raises(RankTableError, match="not in the table"):
        place(range(1, 9), 1)
    with pytest.raises(RankTableError, match="identities of 1 MPI rank"):
        place(range(8), 2)


def test_server_id_override_and_local_ids(monkeypatch):
    ids = local_host_ids({"MPITRANS_SERVER_ID": "hostB"})
    assert ids == {"hostb"}
    assert local_host_ids({"MPITRANS_SERVER_ID": "10.0.0.1, nodeA"}) == {"10.0.0.1", "nodea"}
    mine = local_host_ids({})
    import socket

    assert socket.gethostname().lower() in mine and "localhost" in mine
    table = _table({"hostA": 2, "hostB": 2})
    ranks = [local_host_ids({"MPITRANS_SERVER_ID": h}) for h in ("hostA", "hostB", "hostB")]
    assert rank_table_placement(table, ranks)(range(4), 3) == {0: 0, 1: 0, 2: 1, 3: 2}
    monkeypatch.setenv("MPITRANS_SERVER_ID", "only-me")
    assert local_host_ids() == {"only-me"}
    # job_placement all-gathers local_host_ids() through the transport's function.
    gathered = []

    def allgather(data: bytes) -> list[bytes]:
        gathered.append(data)
        return [b'["hosta"]', data]

    place = job_placement(_table({"hostA": 1, "only-me": 1}), allgather)
    assert gathered == [b'["only-me"]'] and place([0, 1], 2) == {0: 0, 1: 1}
    assert not all_local(_table({"127.0.0.1": 1}))
    monkeypatch.delenv("MPITRANS_SERVER_ID")
    assert all_local(_table({"127.0.0.1": 1, "localhost": 1}))


_DRIVER = """
import json, sys
from mpitrans import cluster as rt
from mpitrans.job.transport import make_transport
t = make_transport(None)
place = rt.job_placement(rt.load(sys.argv[1]), t.allgather_bytes)
where = place(list(range(8)), t.size)
if t.rank == 0:
    print(json.dumps(where, sort_keys=True))
"""


@pytest.mark.mpi
def test_job_placement_under_mpirun(tmp_path):
    """Four MPI ranks pretending to be two hosts (MPITRANS_SERVER_ID per rank, MPMD launch); the table
    lists hostB first, so targets 0-3 must go to MPI ranks 2,3 and 4-7 to MPI ranks 0,1."""
    import subprocess
    import sys

    from tests.support.mpirun import MPIRUN, mpi_env

    paths = []
    for sid, net in (("hostB", 1), ("hostA", 0)):
        paths.append(generate("[0,4)", server_ip=sid, out_dir=str(tmp_path), hccn_tool=None,
                              device_ips=",".join(f"10.0.{net}.{i}" for i in range(4))))
    table = tmp_path / "t8.json"
    merge(paths, out=table)
    app = [sys.executable, "-c", _DRIVER, str(table)]
    cmd = [str(MPIRUN), "--oversubscribe", "-n", "2", "-x", "MPITRANS_SERVER_ID=hostA", *app,
           ":", "-n", "2", "-x", "MPITRANS_SERVER_ID=hostB", *app]
    result = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    where = {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    assert where == {0: 2, 1: 3, 2: 2, 3: 3, 4: 0, 5: 1, 6: 0, 7: 1}
