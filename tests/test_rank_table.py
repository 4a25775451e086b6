"""Rank tables: hccl_tools.py / merge_hccl.py equivalents, validation, hostfiles, placement."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest

from mpitrans import rank_table as rt
from mpitrans.errors import MpitransError
from mpitrans.rank_table import RankTableError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "rank_tables"

# The seed document's hccl_tools.py run (GLM-6B walk-through): server 192.168.1.196, devices 0..7.
SEED_SERVER = "192.168.1.196"
SEED_IPS = ["192.168.100.101", "192.168.101.101", "192.168.102.101", "192.168.103.101",
            "192.168.100.100", "192.168.101.100", "192.168.102.100", "192.168.103.100"]
SECOND_SERVER = "192.168.1.197"
SECOND_IPS = ["192.168.100.103", "192.168.101.103", "192.168.102.103", "192.168.103.103",
              "192.168.100.102", "192.168.101.102", "192.168.102.102", "192.168.103.102"]


def hccn_conf(tmp_path: Path, ips: list[str], ids: list[int] | None = None) -> str:
    path = tmp_path / "hccn.conf"
    ids = list(range(len(ips))) if ids is None else ids
    lines = ["# written by the tests", *(f"address_{i}={ip}" for i, ip in zip(ids, ips, strict=True)),
             "netmask_0=255.255.255.0"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def all_strings(obj) -> bool:
    if isinstance(obj, dict):
        return all(all_strings(v) for v in obj.values())
    if isinstance(obj, list):
        return all(all_strings(v) for v in obj)
    return isinstance(obj, str)


# ------------------------------------------------------------------------------------------ generate


def test_generate_from_hccn_conf_matches_seed(tmp_path):
    conf = hccn_conf(tmp_path, SEED_IPS)
    path = rt.generate("[0,8)", server_ip=SEED_SERVER, hccn_conf=conf, out_dir=str(tmp_path), hccn_tool=None)
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
    a = rt.generate("[0,8]", out_dir=str(tmp_path / "a"), **kw)
    b = rt.generate("[0,8)", out_dir=str(tmp_path / "b"), **kw)
    assert os.path.basename(a) == os.path.basename(b)
    assert Path(a).read_text() == Path(b).read_text()
    assert rt.parse_device_num("[0,4]") == (0, 4) == rt.parse_device_num("4") == rt.parse_device_num("[0, 4)")
    assert rt.parse_device_num("[8,16)") == (8, 16)
    for bad in ("[4,4)", "[5,2)", "0-8", "[a,b)"):
        with pytest.raises(RankTableError, match="--device-num"):
            rt.parse_device_num(bad)


def test_generate_with_device_ips_by_hand(tmp_path):
    path = rt.generate("[0,4)", server_ip="10.1.1.1", device_ips=",".join(SEED_IPS[:4]),
                       hccn_conf=str(tmp_path / "absent.conf"), out_dir=str(tmp_path), hccn_tool=None)
    assert os.path.basename(path) == "hccl_4p_0123_10.1.1.1.json"
    table = rt.load(path)
    assert [d.device_ip for d in table.servers[0].devices] == SEED_IPS[:4]
    with pytest.raises(RankTableError, match="lists 3 address"):
        rt.build("[0,4)", server_ip="10.1.1.1", device_ips=",".join(SEED_IPS[:3]), hccn_tool=None)


def test_visible_devices_physical_ids_logical_ranks(tmp_path):
    # Container given the last four chips: logical 0..3 are physical 4..7. The table must say device_id
    # 4..7 with the IPs of address_4..7, rank_id 0..3, and be named after the logical ids.
    conf = hccn_conf(tmp_path, SEED_IPS)
    path = rt.generate("[0,4]", visible_devices="4,5,6,7", server_ip=SEED_SERVER, hccn_conf=conf,
                       out_dir=str(tmp_path), hccn_tool=None)
    assert os.path.basename(path) == "hccl_4p_0123_192.168.1.196.json"
    devs = rt.load(path).servers[0].devices
    assert [d.device_id for d in devs] == ["4", "5", "6", "7"]
    assert [d.device_ip for d in devs] == SEED_IPS[4:]
    assert [d.rank_id for d in devs] == [0, 1, 2, 3]
    # By physical id by hand too.
    table, _ = rt.build("[1,3)", visible_devices="4,5,6,7", server_ip="h", hccn_tool=None,
                        device_ips="5=10.0.0.5,6=10.0.0.6")
    assert [(d.device_id, d.device_ip, d.rank_id) for d in table.servers[0].devices] == [
        ("5", "10.0.0.5", 0), ("6", "10.0.0.6", 1)]
    with pytest.raises(RankTableError, match="only 4 are visible"):
        rt.build("[0,8)", visible_devices="4,5,6,7", server_ip="h", device_ips="1.1.1.1", hccn_tool=None)


def test_hccn_tool_is_asked_for_physical_ids(tmp_path):
    tool = tmp_path / "hccn_tool"
    log = tmp_path / "calls"
    tool.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "ipaddr:10.9.$2.1"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    table, logical = rt.build("[0,2)", visible_devices="6,7", server_ip="10.0.0.1",
                              hccn_conf=str(tmp_path / "absent"), hccn_tool=str(tool))
    assert logical == [0, 1]
    devs = table.servers[0].devices
    assert [(d.device_id, d.device_ip) for d in devs] == [("6", "10.9.6.1"), ("7", "10.9.7.1")]
    assert log.read_text().split("\n")[:2] == ["-i 6 -ip -g", "-i 7 -ip -g"]


def test_generate_without_any_ip_source_says_what_to_do(tmp_path):
    with pytest.raises(RankTableError, match="--device-ips") as err:
        rt.build("[0,2)", server_ip="10.0.0.1", hccn_conf=str(tmp_path / "absent.conf"), hccn_tool=None)
    assert "absent.conf" in str(err.value)
    conf = hccn_conf(tmp_path, SEED_IPS[:2])
    with pytest.raises(RankTableError, match="address_2"):
        rt.build("[0,4)", server_ip="10.0.0.1", hccn_conf=conf, hccn_tool=None)


def test_default_server_ip_is_an_address(tmp_path):
    table, _ = rt.build("[0,1)", device_ips="10.0.0.1", hccn_tool=None)
    assert rt._is_ip(table.servers[0].server_id)
    assert isinstance(rt.load(rt.write(table, tmp_path / "t.json")), rt.RankTable)


# --------------------------------------------------------------------------------------------- merge


def _two_nodes(tmp_path: Path, first=(SEED_SERVER, SEED_IPS),
               second=(SECOND_SERVER, SECOND_IPS)) -> list[str]:
    paths = []
    for sid, ips in (first, second):
        paths.append(rt.generate("[0,8)", server_ip=sid, device_ips=",".join(ips), out_dir=str(tmp_path),
                                 hccn_tool=None))
    return paths


def test_round_trip_generate_merge_hostfile_show(tmp_path):
    a, b = _two_nodes(tmp_path)
    out = tmp_path / "merged.json"
    merged = rt.merge([a, b], out=out)
    assert all_strings(merged)
    # Identical to the checked-in example.
    assert merged == json.loads((EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json").read_text())
    table = rt.load(out)
    assert table.rank_count == 16 and table.server_count == 2
    assert table.servers[0].ranks == list(range(8)) and table.servers[1].ranks == list(range(8, 16))
    assert table.server_of(11).server_id == SECOND_SERVER
    assert [d.device_id for d in table.servers[1].devices] == [str(i) for i in range(8)]
    assert rt.hostfile(table) == "192.168.1.196 slots=8\n192.168.1.197 slots=8\n"
    assert rt.hostfile(table, "mpich") == "192.168.1.196:8\n192.168.1.197:8\n"
    assert rt.mpirun_command(table, "hosts") == "mpirun -n 16 -hostfile hosts"
    assert rt.mpirun_command(table, "hosts", "mpich") == "mpiexec -n 16 -f hosts"
    text = rt.show(table)
    assert "2 server(s), 16 rank(s)" in text
    assert "192.168.1.197  (8 device(s), ranks 8-15)" in text
    assert "     13       5  192.168.101.102" in text
    assert rt.merged_name(merged) == "hccl_2s_16p.json"


def test_examples_are_valid():
    for path in EXAMPLES.glob("*.json"):
        table = rt.load(path)
        assert table.rank_count == int(path.name.split("_")[1].rstrip("p"))


def test_merge_sort_by_ip_is_numeric(tmp_path):
    ips9 = [f"10.1.9.{i}" for i in range(8)]
    ips10 = [f"10.1.10.{i}" for i in range(8)]
    a, b = _two_nodes(tmp_path, ("10.0.0.10", ips10), ("10.0.0.9", ips9))
    given = rt.from_json(rt.merge([a, b]))
    assert [s.server_id for s in given.servers] == ["10.0.0.10", "10.0.0.9"]
    by_ip = rt.from_json(rt.merge([a, b], sort_by_ip=True))
    assert [s.server_id for s in by_ip.servers] == ["10.0.0.9", "10.0.0.10"]
    assert by_ip.servers[0].ranks == list(range(8))
    assert by_ip.servers[0].devices[0].device_ip == "10.1.9.0"
    assert rt._ip_sort_key("10.0.0.9") < rt._ip_sort_key("10.0.0.10") < rt._ip_sort_key("::1")
    assert rt._ip_sort_key("::1") < rt._ip_sort_key("node-a")


def test_merge_repairs_integer_rank_ids_and_renumbers(tmp_path):
    a, b = _two_nodes(tmp_path)
    data = json.loads(Path(b).read_text())
    for i, d in enumerate(data["server_list"][0]["device"]):  # merge_hccl.py-style output: numbers
        d["rank_id"] = i + 8
    Path(b).write_text(json.dumps(data))
    merged = rt.merge([b, a])
    assert all_strings(merged)
    assert merged["server_list"][0]["server_id"] == SECOND_SERVER
    assert [d["rank_id"] for d in merged["server_list"][0]["device"]] == [str(i) for i in range(8)]
    assert [d["rank_id"] for d in merged["server_list"][1]["device"]] == [str(i) for i in range(8, 16)]


def test_merge_errors(tmp_path):
    a, b = _two_nodes(tmp_path)
    with pytest.raises(RankTableError, match="server 192.168.1.196 appears twice"):
        rt.merge([a, a])
    c = rt.generate("[0,2)", server_ip="192.168.1.198", device_ips=f"{SEED_IPS[3]},10.0.0.1",
                    out_dir=str(tmp_path), hccn_tool=None)
    with pytest.raises(RankTableError, match=r"duplicate device_ip 192\.168\.103\.101"):
        rt.merge([a, c])
    data = json.loads(Path(b).read_text())
    devs = data["server_list"][0]["device"]
    devs[2]["rank_id"], devs[3]["rank_id"] = devs[3]["rank_id"], devs[2]["rank_id"]
    Path(b).write_text(json.dumps(data))
    with pytest.raises(RankTableError, match=r"server_list\[0\]\.device\[3\]: rank_id 2 out of order"):
        rt.merge([a, b])
    with pytest.raises(RankTableError, match="no rank table"):
        rt.merge([])


# ---------------------------------------------------------------------------------------- validation


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
        rt.load(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, MpitransError)


def test_unreadable_tables(tmp_path):
    (tmp_path / "broken.json").write_text('{"version": "1.0",')
    with pytest.raises(RankTableError, match="not valid JSON"):
        rt.load(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(RankTableError, match="top level must be a JSON object"):
        rt.load(tmp_path / "list.json")
    with pytest.raises(RankTableError, match="cannot read"):
        rt.load(tmp_path / "absent.json")
    (tmp_path / "old.json").write_text('{"board_id": "0x0000", "group_list": []}')
    with pytest.raises(RankTableError, match="group_list"):
        rt.load(tmp_path / "old.json")


# ----------------------------------------------------------------------------------------- placement


def _table(servers: dict[str, int]) -> rt.RankTable:
    rank, out, n = 0, [], 0
    for sid, count in servers.items():
        devs = []
        for i in range(count):
            devs.append(rt.Device(str(i), f"10.99.{n}.{i}", rank))
            rank += 1
        n += 1
        out.append(rt.Server(sid, devs))
    return rt.RankTable(out)


def test_placement_two_servers_four_ranks_each():
    table = _table({"10.0.0.1": 4, "10.0.0.2": 4})
    # MPI ranks 0,2 on node A (known by IP), 1,3 on node B (known by name and IP).
    a = {"nodea", "nodea.cluster", "10.0.0.1", "127.0.0.1"}
    b = {"NodeB", "10.0.0.2"}
    place = rt.rank_table_placement(table, [a, b, a, b])
    assert place(range(8), 4) == {0: 0, 1: 2, 2: 0, 3: 2, 4: 1, 5: 3, 6: 1, 7: 3}
    # One MPI rank per server.
    one_each = rt.rank_table_placement(table, [b, a])
    assert one_each(list(range(8)), 2) == {t: (1 if t < 4 else 0) for t in range(8)}
    # Eight MPI ranks, one per device, hostfile order: rank i writes target i.
    place8 = rt.rank_table_placement(table, [a] * 4 + [b] * 4)
    assert place8(range(8), 8) == {t: t for t in range(8)}


def test_placement_by_host_name_and_balanced_when_servers_share_ranks():
    table = _table({"localhost": 4, "127.0.0.1": 4})
    me = {"localhost", "127.0.0.1", "vm"}
    where = rt.rank_table_placement(table, [me, me])(range(8), 2)
    assert sorted(where) == list(range(8))
    assert sorted(where.values()).count(0) == 4 and sorted(where.values()).count(1) == 4
    named = _table({"NodeB.example": 2})
    assert rt.rank_table_placement(named, [{"x"}, {"nodeb.example"}])([0, 1], 2) == {0: 1, 1: 1}


def test_placement_missing_server_is_named():
    table = _table({"10.0.0.1": 4, "10.0.0.2": 4})
    place = rt.rank_table_placement(table, [{"10.0.0.1", "nodea"}, {"10.0.0.1", "nodea"}])
    expected = r"no MPI rank runs on server 10\.0\.0\.2 \(table ranks 4-7\)"
    with pytest.raises(RankTableError, match=expected) as err:
        place(range(8), 2)
    assert "MPITRANS_SERVER_ID" in str(err.value) and "rank 0: 10.0.0.1, nodea" in str(err.value)


def test_placement_rank_count_mismatch():
    table = _table({"10.0.0.1": 4, "10.0.0.2": 4})
    place = rt.rank_table_placement(table, [{"10.0.0.1", "10.0.0.2"}])
    with pytest.raises(RankTableError, match="has 8 rank.* destination layout has 4 target"):
        place(range(4), 1)
    with pytest.raises(RankTableError, match="not in the table"):
        place(range(1, 9), 1)
    with pytest.raises(RankTableError, match="identities of 1 MPI rank"):
        place(range(8), 2)


def test_server_id_override_and_local_ids(monkeypatch):
    ids = rt.local_host_ids({"MPITRANS_SERVER_ID": "hostB"})
    assert ids == {"hostb"}
    assert rt.local_host_ids({"MPITRANS_SERVER_ID": "10.0.0.1, nodeA"}) == {"10.0.0.1", "nodea"}
    mine = rt.local_host_ids({})
    import socket

    assert socket.gethostname().lower() in mine and "localhost" in mine
    table = _table({"hostA": 2, "hostB": 2})
    ranks = [rt.local_host_ids({"MPITRANS_SERVER_ID": h}) for h in ("hostA", "hostB", "hostB")]
    assert rt.rank_table_placement(table, ranks)(range(4), 3) == {0: 0, 1: 0, 2: 1, 3: 2}
    monkeypatch.setenv("MPITRANS_SERVER_ID", "only-me")
    assert rt.local_host_ids() == {"only-me"}
    # job_placement all-gathers local_host_ids() through the transport's function.
    gathered = []

    def allgather(data: bytes) -> list[bytes]:
        gathered.append(data)
        return [b'["hosta"]', data]

    place = rt.job_placement(_table({"hostA": 1, "only-me": 1}), allgather)
    assert gathered == [b'["only-me"]'] and place([0, 1], 2) == {0: 0, 1: 1}
    assert not rt.all_local(_table({"127.0.0.1": 1}))
    monkeypatch.delenv("MPITRANS_SERVER_ID")
    assert rt.all_local(_table({"127.0.0.1": 1, "localhost": 1}))


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_generate_merge_hostfile_show(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    conf = hccn_conf(tmp_path, SEED_IPS)
    assert rt.main(["generate", "--device_num", "[0,8]", "--server_ip", SEED_SERVER, "--hccn-conf", conf,
                    "--hccn-tool", "none"]) == 0
    out = capsys.readouterr().out
    assert "rank_id:7, device_id:7, device_ip:192.168.103.100" in out
    assert (tmp_path / "hccl_8p_01234567_192.168.1.196.json").exists()
    assert rt.main(["generate", "--server-ip", SECOND_SERVER, "--device-ips", ",".join(SECOND_IPS)]) == 0
    capsys.readouterr()
    assert rt.main(["merge", "hccl_8p_01234567_192.168.1.197.json", "hccl_8p_01234567_192.168.1.196.json",
                    "--sort-by-ip"]) == 0
    assert "into " + str(tmp_path / "hccl_2s_16p.json") in capsys.readouterr().out
    assert rt.load("hccl_2s_16p.json").servers[0].server_id == SEED_SERVER
    assert rt.main(["hostfile", "hccl_2s_16p.json", "-o", "hosts"]) == 0
    assert capsys.readouterr().out.strip() == "mpirun -n 16 -hostfile hosts"
    assert (tmp_path / "hosts").read_text() == "192.168.1.196 slots=8\n192.168.1.197 slots=8\n"
    assert rt.main(["hostfile", "hccl_2s_16p.json", "--format", "mpich"]) == 0
    assert capsys.readouterr().out.startswith("192.168.1.196:8\n192.168.1.197:8\n# mpiexec -n 16 -f")
    assert rt.main(["show", "hccl_2s_16p.json"]) == 0
    assert "ranks 8-15" in capsys.readouterr().out
    assert rt.main(["is-local", "hccl_2s_16p.json"]) == 1
    assert rt.main(["is-local", str(EXAMPLES / "hccl_8p_01234567_127.0.0.1.json")]) == 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    assert rt.main(["show", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpitrans: error: ") and "missing version" in err and err.count("\n") == 1
    assert rt.main(["merge", str(tmp_path / "absent.json")]) == 1
    capsys.readouterr()
    assert rt.main(["shw", str(tmp_path / "bad.json")]) == 2  # a usage error too: one line, no usage text
    err = capsys.readouterr().err
    assert err.startswith("mpitrans: error: argument") and "invalid choice: 'shw'" in err and err.count("\n") == 1
    assert rt.main(["--debug", "show", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.endswith("missing version\n")
    with pytest.raises(SystemExit) as exc:
        rt.main(["--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out


def _table_with_server_id(tmp_path: Path, server_id: str) -> Path:
    data = json.loads((EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json").read_text())
    data["server_list"][1]["server_id"] = server_id
    path = tmp_path / "table.json"
    path.write_text(json.dumps(data))
    return path


def test_hostfile_refuses_server_ids_a_launcher_would_misread(tmp_path, capsys):
    for server_id in ("node 1", "node1;rm -rf x", "node1\tb", "node#1", '"node1"', "node1\n"):
        path = _table_with_server_id(tmp_path, server_id)
        table = rt.load(path)  # a valid rank table otherwise (HCCL does not look at server_id's characters)
        with pytest.raises(RankTableError, match=r"server_list\[1\]\.server_id .* cannot go into a hostfile"):
            rt.hostfile(table)
        assert rt.main(["hostfile", str(path), "-o", str(tmp_path / "hosts")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mpitrans: error: ") and repr(server_id) in err and err.count("\n") == 1
        assert not (tmp_path / "hosts").exists()
    # what hostfiles do hold is kept as is
    for server_id in ("10.0.0.7", "node-1.cluster_a", "fd00::2", "fe80::1%eth0", "::1", "alice@node1"):
        table = rt.load(_table_with_server_id(tmp_path, server_id))
        assert rt.hostfile(table).splitlines()[1] == f"{server_id} slots=8"


def test_table_round_trips_through_json():
    table = rt.load(EXAMPLES / "hccl_16p_2s_192.168.1.196_192.168.1.197.json")
    again = rt.from_json(copy.deepcopy(table.to_json()))
    assert again == table


_DRIVER = """
import json, sys
from mpitrans import rank_table as rt
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
        paths.append(rt.generate("[0,4)", server_ip=sid, out_dir=str(tmp_path), hccn_tool=None,
                                 device_ips=",".join(f"10.0.{net}.{i}" for i in range(4))))
    table = tmp_path / "t8.json"
    rt.merge(paths, out=table)
    app = [sys.executable, "-c", _DRIVER, str(table)]
    cmd = [str(MPIRUN), "--oversubscribe", "-n", "2", "-x", "MPITRANS_SERVER_ID=hostA", *app,
           ":", "-n", "2", "-x", "MPITRANS_SERVER_ID=hostB", *app]
    result = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    where = {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    assert where == {0: 2, 1: 3, 2: 2, 3: 3, 4: 0, 5: 1, 6: 0, 7: 1}
