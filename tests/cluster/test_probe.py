"""This server's table, like hccl_tools.py: device ranges, physical ids, device IPs from every source."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mpitrans.cluster.probe import build, generate, parse_device_num
from mpitrans.cluster.rank_table import RankTable, RankTableError, is_ip, load, write
from tests.support.rank_tables import SEED_IPS, SEED_SERVER, all_strings, hccn_conf


def test_generate_from_hccn_conf_matches_seed(tmp_path):
    conf = hccn_conf(tmp_path, SEED_IPS)
    path = generate("[0,8)", server_ip=SEED_SERVER, hccn_conf=conf, out_dir=str(tmp_path), hccn_tool=None)
    assert os.path.basename(path) == "hccl_8p_01234567_192.168.1.196.json"  # seed doc's file name
    data = json.loads(Path(path).read_text())
    assert all_strings(data)
    assert data["version"] == "1.0" and data["server_count"] == "1" and data["status"] == "completed"
    (server,) = data["server_list"]
    assert server["server_id"] == SEED_SERVER and server["host_nic_ip"] == "reserve"
    assert server["device"] == [{"device_id": str(i), "device_ip": ip, "rank_id": str(i)}
                                for i, ip in enumerate(SEED_IPS)]


def test_closed_bracket_reads_half_open_like_hccl_tools(tmp_path):
    conf = hccn_conf(tmp_path, SEED_IPS)
    kw = dict(server_ip=SEED_SERVER, hccn_conf=conf, hccn_tool=None)
    a = generate("[0,8]", out_dir=str(tmp_path / "a"), **kw)
    b = generate("[0,8)", out_dir=str(tmp_path / "b"), **kw)
    assert os.path.basename(a) == os.path.basename(b)
    assert Path(a).read_text() == Path(b).read_text()
    assert parse_device_num("[0,4]") == (0, 4) == parse_device_num("4") == parse_device_num("[0, 4)")
    assert parse_device_num("[8,16)") == (8, 16)
    for bad in ("[4,4)", "[5,2)", "0-8", "[a,b)"):
        with pytest.raises(RankTableError, match="--device-num"):
            parse_device_num(bad)


def test_generate_with_device_ips_by_hand(tmp_path):
    path = generate("[0,4)", server_ip="10.1.1.1", device_ips=",".join(SEED_IPS[:4]),
                    hccn_conf=str(tmp_path / "absent.conf"), out_dir=str(tmp_path), hccn_tool=None)
    assert os.path.basename(path) == "hccl_4p_0123_10.1.1.1.json"
    table = load(path)
    assert [d.device_ip for d in table.servers[0].devices] == SEED_IPS[:4]
    with pytest.raises(RankTableError, match="lists 3 address"):
        build("[0,4)", server_ip="10.1.1.1", device_ips=",".join(SEED_IPS[:3]), hccn_tool=None)


def test_visible_devices_physical_ids_logical_ranks(tmp_path):
    # Container given the last four chips: logical 0..3 are physical 4..7. The table must say device_id
    # 4..7 with the IPs of address_4..7, rank_id 0..3, and be named after the logical ids.
    conf = hccn_conf(tmp_path, SEED_IPS)
    path = generate("[0,4]", visible_devices="4,5,6,7", server_ip=SEED_SERVER, hccn_conf=conf,
                    out_dir=str(tmp_path), hccn_tool=None)
    assert os.path.basename(path) == "hccl_4p_0123_192.168.1.196.json"
    devs = load(path).servers[0].devices
    assert [d.device_id for d in devs] == ["4", "5", "6", "7"]
    assert [d.device_ip for d in devs] == SEED_IPS[4:]
    assert [d.rank_id for d in devs] == [0, 1, 2, 3]
    # By physical id by hand too.
    table, _ = build("[1,3)", visible_devices="4,5,6,7", server_ip="h", hccn_tool=None,
                     device_ips="5=10.0.0.5,6=10.0.0.6")
    assert [(d.device_id, d.device_ip, d.rank_id) for d in table.servers[0].devices] == [
        ("5", "10.0.0.5", 0), ("6", "10.0.0.6", 1)]
    with pytest.raises(RankTableError, match="only 4 are visible"):
        build("[0,8)", visible_devices="4,5,6,7", server_ip="h", device_ips="1.1.1.1", hccn_tool=None)


def test_hccn_tool_is_asked_for_physical_ids(tmp_path):
    tool = tmp_path / "hccn_tool"
    log = tmp_path / "calls"
    tool.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "ipaddr:10.9.$2.1"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    table, logical = build("[0,2)", visible_devices="6,7", server_ip="10.0.0.1",
                           hccn_conf=str(tmp_path / "absent"), hccn_tool=str(tool))
    assert logical == [0, 1]
    devs = table.servers[0].devices
    assert [(d.device_id, d.device_ip) for d in devs] == [("6", "10.9.6.1"), ("7", "10.9.7.1")]
    assert log.read_text().split("\n")[:2] == ["-i 6 -ip -g", "-i 7 -ip -g"]


def test_generate_without_any_ip_source_says_what_to_do(tmp_path):
    with pytest.raises(RankTableError, match="--device-ips") as err:
        build("[0,2)", server_ip="10.0.0.1", hccn_conf=str(tmp_path / "absent.conf"), hccn_tool=None)
    assert "absent.conf" in str(err.value)
    conf = hccn_conf(tmp_path, SEED_IPS[:2])
    with pytest.raises(RankTableError, match="address_2"):
        build("[0,4)", server_ip="10.0.0.1", hccn_conf=conf, hccn_tool=None)


def test_default_server_ip_is_an_address(tmp_path):
    table, _ = build("[0,1)", device_ips="10.0.0.1", hccn_tool=None)
    assert is_ip(table.servers[0].server_id)
    assert isinstance(load(write(table, tmp_path / "t.json")), RankTable)
