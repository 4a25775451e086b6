"""Joining per-server tables like merge_hccl.py: renumbering, numeric IP order, repairs and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpitrans.cluster.hostfile import hostfile, mpirun_command
from mpitrans.cluster.merge import _ip_sort_key, merge, merged_name
from mpitrans.cluster.probe import generate
from mpitrans.cluster.rank_table import RankTableError, from_json, load, show
from tests.support.rank_tables import EXAMPLES, SECOND_IPS, SECOND_SERVER, SEED_IPS, SEED_SERVER, all_strings


def _two_nodes(tmp_path: Path, first=(SEED_SERVER, SEED_IPS),
               second=(SECOND_SERVER, SECOND_IPS)) -> list[str]:
    paths = []
    for sid, ips in (first, second):
        paths.append(generate("[0,8)", server_ip=sid, device_ips=",".join(ips), out_dir=str(tmp_path),
                              hccn_tool=None))
    return paths


def test_round_trip_generate_merge_hostfile_show(tmp_path):
    a, b = _two_nodes(tmp_path)
    out = tmp_path / "merged.json"
    merged = merge([a, b], out=out)
    assert all_strings(merged)
    # Identical to the checked-in example.
    assert merged == json.loads((EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json").read_text())
    table = load(out)
    assert table.rank_count == 16 and table.server_count == 2
    assert table.servers[0].ranks == list(range(8)) and table.servers[1].ranks == list(range(8, 16))
    assert table.server_of(11).server_id == SECOND_SERVER
    assert [d.device_id for d in table.servers[1].devices] == [str(i) for i in range(8)]
    assert hostfile(table) == "192.168.1.196 slots=8\n192.168.1.197 slots=8\n"
    assert hostfile(table, "mpich") == "192.168.1.196:8\n192.168.1.197:8\n"
    assert mpirun_command(table, "hosts") == "mpirun -n 16 -hostfile hosts"
    assert mpirun_command(table, "hosts", "mpich") == "mpiexec -n 16 -f hosts"
    text = show(table)
    assert "2 server(s), 16 rank(s)" in text
    assert "192.168.1.197  (8 device(s), ranks 8-15)" in text
    assert "     13       5  192.168.101.102" in text
    assert merged_name(merged) == "hccl_2s_16p.json"


def test_merge_sort_by_ip_is_numeric(tmp_path):
    ips9 = [f"10.1.9.{i}" for i in range(8)]
    ips10 = [f"10.1.10.{i}" for i in range(8)]
    a, b = _two_nodes(tmp_path, ("10.0.0.10", ips10), ("10.0.0.9", ips9))
    given = from_json(merge([a, b]))
    assert [s.server_id for s in given.servers] == ["10.0.0.10", "10.0.0.9"]
    by_ip = from_json(merge([a, b], sort_by_ip=True))
    assert [s.server_id for s in by_ip.servers] == ["10.0.0.9", "10.0.0.10"]
    assert by_ip.servers[0].ranks == list(range(8))
    assert by_ip.servers[0].devices[0].device_ip == "10.1.9.0"
    assert _ip_sort_key("10.0.0.9") < _ip_sort_key("10.0.0.10") < _ip_sort_key("::1")
    assert _ip_sort_key("::1") < _ip_sort_key("node-a")


def test_merge_repairs_integer_rank_ids_and_renumbers(tmp_path):
    a, b = _two_nodes(tmp_path)
    data = json.loads(Path(b).read_text())
    for i, d in enumerate(data["server_list"][0]["device"]):  # merge_hccl.py-style output: numbers
        d["rank_id"] = i + 8
    Path(b).write_text(json.dumps(data))
    merged = merge([b, a])
    assert all_strings(merged)
    assert merged["server_list"][0]["server_id"] == SECOND_SERVER
    assert [d["rank_id"] for d in merged["server_list"][0]["device"]] == [str(i) for i in range(8)]
    assert [d["rank_id"] for d in merged["server_list"][1]["device"]] == [str(i) for i in range(8, 16)]


def test_merge_errors(tmp_path):
    a, b = _two_nodes(tmp_path)
    with pytest.raises(RankTableError, match="server 192.168.1.196 appears twice"):
        merge([a, a])
    c = generate("[0,2)", server_ip="192.168.1.198", device_ips=f"{SEED_IPS[3]},10.0.0.1",
                 out_dir=str(tmp_path), hccn_tool=None)
    with pytest.raises(RankTableError, match=r"duplicate device_ip 192\.168\.103\.101"):
        merge([a, c])
    data = json.loads(Path(b).read_text())
    devs = data["server_list"][0]["device"]
    devs[2]["rank_id"], devs[3]["rank_id"] = devs[3]["rank_id"], devs[2]["rank_id"]
    Path(b).write_text(json.dumps(data))
    with pytest.raises(RankTableError, match=r"server_list\[0\]\.device\[3\]: rank_id 2 out of order"):
        merge([a, b])
    with pytest.raises(RankTableError, match="no rank table"):
        merge([])
