"""Join per-server rank tables into the cluster's table, like MindFormers' merge_hccl.py.

Each server makes its own table (`probe`); the job needs one table in which rank ids run 0..M-1 over
all servers. Unlike merge_hccl.py, the result is checked (no server or device IP twice), writes every
value as a string, and can order servers by numeric address rather than by the shell's glob order.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from mpitrans.cluster.rank_table import (
    Device,
    RankTable,
    RankTableError,
    Server,
    from_json,
    host_key,
    load,
    repeat_of,
    write,
)


def _ip_sort_key(server_id: str) -> tuple:
    """IPv4 numerically, then IPv6 numerically, then host names alphabetically."""
    try:
        ip = ipaddress.ip_address(server_id.split("%", 1)[0])
        return (0 if ip.version == 4 else 1, int(ip), "")
    except ValueError:
        return (2, 0, server_id.lower())


def _servers_of(paths: Sequence[str | os.PathLike]) -> list[Server]:
    """Every server of every input, in order, once all inputs have been read and checked; refuses a
    server or device IP that two inputs share (usually one node's table given twice), naming both."""
    entries: list[tuple[Server, str]] = []
    for p in map(os.fspath, paths):
        table = load(p, strict=False, contiguous=False)
        entries.extend((s, f"{p} server_list[{i}]") for i, s in enumerate(table.servers))
    seen: dict[str, str] = {}
    seen_ip: dict[str, str] = {}
    for s, where in entries:
        if first := repeat_of(seen, host_key(s.server_id), where):
            raise RankTableError(f"merge: server {s.server_id} appears twice: {first} and {where} "
                                 "(was one node's table given twice?)")
        for j, d in enumerate(s.devices):
            if first := repeat_of(seen_ip, host_key(d.device_ip), f"{where}.device[{j}]"):
                raise RankTableError(f"merge: duplicate device_ip {d.device_ip}: {first} and "
                                     f"{where}.device[{j}]")
    return [s for s, _ in entries]


def merged_name(table: RankTable | dict) -> str:
    """merge_hccl.py's file name: hccl_{servers}s_{ranks}p.json."""
    t = table if isinstance(table, RankTable) else from_json(table)
    return f"hccl_{t.server_count}s_{t.rank_count}p.json"


def merge_table(paths: Sequence[str | os.PathLike], sort_by_ip: bool = False) -> RankTable:
    """The merged table (see `merge`), validated like any table read from disk."""
    if not paths:
        raise RankTableError("merge: no rank table given")
    servers = _servers_of(paths)
    if sort_by_ip:
        servers.sort(key=lambda s: _ip_sort_key(s.server_id))
    merged: list[Server] = []
    rank = 0
    for s in servers:
        merged.append(Server(s.server_id, [Device(d.device_id, d.device_ip, rank + k)
                                           for k, d in enumerate(s.devices)], s.host_nic_ip))
        rank += len(s.devices)
    return from_json(RankTable(merged).to_json(), "merged rank table")


def merge(paths: Sequence[str | os.PathLike], sort_by_ip: bool = False,
          out: str | os.PathLike | None = None) -> dict:
    """Join per-node tables into one cluster table, like MindFormers' merge_hccl.py.

    rank_id is renumbered 0..M-1 file by file, server by server, device by device, in the order given
    (a shell glob orders 192.168.1.10 before 192.168.1.9, so `sort_by_ip` orders servers by numeric IP
    instead). Inputs may carry integer ids (merge_hccl.py output) but must list ranks in increasing
    order, since renumbering by position would otherwise move devices silently. The same server or
    device IP in two inputs is an error (usually one node's table passed twice). Writes to `out` when
    given; returns the merged table as JSON-ready dict (all strings).
    """
    table = merge_table(paths, sort_by_ip)
    if out is not None:
        write(table, out)
    return table.to_json()
