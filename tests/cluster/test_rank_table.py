"""The rank-table model: strict validation that names the bad entry, reading, JSON round trip."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from mpitrans.cluster.rank_table import RankTableError, from_json, load
from mpitrans.errors import MpitransError
from tests.support.rank_tables import EXAMPLES, REPO


def test_examples_are_valid():
    for path in EXAMPLES.glob("*.json"):
        table = load(path)
        assert table.rank_count == int(path.name.split("_")[1].rstrip("p"))


def _example() -> dict:
    return json.loads((EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json").read_text())


def _mutations():
    def missing_ip(d):
        del d["server_list"][1]["device"][3]["device_ip"]

    def int_rank(d):
        d["server_list"][0]["device"][2]["rank_id"] = 2

    def int_count(d):
        d["server_count"] = 2

    def dup_ip(d):
        d["server_list"][1]["device"][0]["device_ip"] = d["server_list"][0]["device"][5]["device_ip"]

    def dup_server(d):
        d["server_list"][1]["server_id"] = d["server_list"][0]["server_id"]

    def gap(d):
        d["server_list"][1]["device"][7]["rank_id"] = "16"

    def dup_rank(d):
        d["server_list"][1]["device"][0]["rank_id"] = "7"

    def order(d):
        devs = d["server_list"][0]["device"]
        devs[0]["rank_id"], devs[1]["rank_id"] = "1", "0"

    def count(d):
        d["server_count"] = "3"

    def status(d):
        d["status"] = "initializing"

    def no_version(d):
        del d["version"]

    def bad_ip(d):
        d["server_list"][0]["device"][1]["device_ip"] = "npu1"

    def no_devices(d):
        d["server_list"][0]["device"] = []

    def dup_device(d):
        d["server_list"][0]["device"][4]["device_id"] = "3"

    def server_not_object(d):
        d["server_list"][1] = "192.168.1.197"

    return [
        (missing_ip, r"server_list\[1\]\.device\[3\]: missing device_ip"),
        (int_rank, r"server_list\[0\]\.device\[2\]\.rank_id: expected a string .*merge_hccl"),
        (int_count, r"server_count: expected a string"),
        (dup_ip, r"server_list\[1\]\.device\[0\]: duplicate device_ip 192\.168\.101\.100 "
                 r"\(also server_list\[0\]\.device\[5\]\)"),
        (dup_server, r"server_list\[1\]: server 192\.168\.1\.196 is listed twice"),
        (gap, r"rank 15 missing, rank 16 beyond \(at server_list\[1\]\.device\[7\]\)"),
        (dup_rank, r"server_list\[1\]\.device\[0\]: rank_id 7 appears twice"),
        (order, r"server_list\[0\]\.device\[1\]: rank_id 0 out of order"),
        (count, r"server_count is '3' but server_list has 2"),
        (status, r"status is 'initializing'"),
        (no_version, r"missing version"),
        (bad_ip, r"server_list\[0\]\.device\[1\]\.device_ip: 'npu1' is not an IP address"),
        (no_devices, r"server_list\[0\]\.device must be a non-empty list"),
        (dup_device, r"server_list\[0\]\.device\[4\]: device_id 3 repeats"),
        (server_not_object, r"server_list\[1\] must be an object"),
    ]


@pytest.mark.parametrize(("mutate", "message"), _mutations(), ids=lambda x: getattr(x, "__name__", ""))
def test_malformed_tables_name_the_entry(tmp_path, mutate, message):
    data = _example()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RankTableError, match=message) as err:
        load(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, MpitransError)


def test_unreadable_tables(tmp_path):
    (tmp_path / "broken.json").write_text('{"version": "1.0",')
    with pytest.raises(RankTableError, match="not valid JSON"):
        load(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(RankTableError, match="top level must be a JSON object"):
        load(tmp_path / "list.json")
    with pytest.raises(RankTableError, match="cannot read"):
        load(tmp_path / "absent.json")
    (tmp_path / "old.json").write_text('{"board_id": "0x0000", "group_list": []}')
    with pytest.raises(RankTableError, match="group_list"):
        load(tmp_path / "old.json")


def test_table_round_trips_through_json():
    table = load(EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json")
    again = from_json(copy.deepcopy(table.to_json()))
    assert again == table


def test_cluster_layer_imports_neither_mpi_nor_mindspore():
    """The cluster layer runs in the launch scripts, before (and without) mpirun."""
    code = ("import sys, mpitrans.cluster, mpitrans.cli.rank_table; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mpi4py', 'mindspore', 'numpy')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
