"""The HCCL rank table (RANK_TABLE_FILE): its model, strict parsing, reading, writing, listing.

A rank table says which device of which server is logical rank x. It is checked strictly here because
a wrong table fails late and expensively: on a cluster, when HCCL or the training job starts. Every
error names the offending entry (``server_list[1].device[3]: missing device_ip``).

Format (version "1.0"; every value is a string)::

    {"version": "1.0", "server_count": "1",
     "server_list": [{"server_id": "192.168.1.196",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}

Standard library only: tables are prepared and checked on machines without Ascend hardware or MPI.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from mpitrans.errors import MpitransError

_K = TypeVar("_K")


class RankTableError(MpitransError):
    """A rank table is malformed, inconsistent with the job, or cannot be generated; the message names
    the offending entry (e.g. ``server_list[1].device[3]: missing device_ip``)."""


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Device:
    device_id: str  # physical device id on its server (what the driver and hccn_tool call it)
    device_ip: str
    rank_id: int  # global logical rank


@dataclass
class Server:
    server_id: str
    devices: list[Device]
    host_nic_ip: str = "reserve"

    @property
    def ranks(self) -> list[int]:
        return [d.rank_id for d in self.devices]


@dataclass
class RankTable:
    """A validated rank table. `path` is where it was read from (for messages), if anywhere."""

    servers: list[Server]
    version: str = "1.0"
    status: str = "completed"
    path: str | None = field(default=None, compare=False)

    @property
    def rank_count(self) -> int:
        return sum(len(s.devices) for s in self.servers)

    @property
    def server_count(self) -> int:
        return len(self.servers)

    @property
    def label(self) -> str:
        """How messages name this table: its path, or "rank table" when it was built in memory."""
        return self.path or "rank table"

    def server_of(self, rank: int) -> Server:
        """The server holding logical rank `rank`."""
        for s in self.servers:
            if rank in s.ranks:
                return s
        raise RankTableError(f"{self.label}: no device has rank_id {rank}")

    def to_json(self) -> dict:
        """The standard JSON object, every value a string (HCCL and MindSpore expect strings)."""
        return {
            "version": self.version,
            "server_count": str(len(self.servers)),
            "server_list": [
                {
                    "server_id": s.server_id,
                    "device": [{"device_id": d.device_id, "device_ip": d.device_ip, "rank_id": str(d.rank_id)}
                               for d in s.devices],
                    "host_nic_ip": s.host_nic_ip,
                }
                for s in self.servers
            ],
            "status": self.status,
        }


# ------------------------------------------------------------------------- helpers shared by the layer


def is_ip(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (an IPv6 zone such as ``%eth0`` allowed)."""
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    except ValueError:
        return False


def host_key(text: str) -> str:
    """Canonical spelling of a host identity: lower case, no trailing dot, compressed IPv6. Tables,
    hostfiles and `socket` spell the same host differently; comparing keys makes them agree."""
    s = text.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(s.split("%", 1)[0]))
    except ValueError:
        return s


def ranks_text(ranks: Sequence[int]) -> str:
    """Ranks as people write them: ``0-7`` for a run, ``1,3,8`` otherwise, ``-`` for none."""
    if not ranks:
        return "-"
    if list(ranks) == list(range(ranks[0], ranks[0] + len(ranks))):
        return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
    return ",".join(map(str, ranks))


def repeat_of(seen: dict[_K, str], key: _K, where: str) -> str | None:
    """Record that `key` stands at `where`; returns where it stood first when it is a repeat (so that
    an error can name both places), else None."""
    if key in seen:
        return seen[key]
    seen[key] = where
    return None


# ------------------------------------------------------------------------------------------ parsing


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _string(obj: dict, key: str, where: str, *, allow_int: bool = False, digits: bool = False) -> str:
    if key not in obj:
        raise RankTableError(f"{where}: missing {key}")
    value = obj[key]
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        hint = ""
        if key == "rank_id" and isinstance(value, int):
            hint = (" (MindFormers' merge_hccl.py writes rank_id as a number; re-merge the per-node tables "
                    "with `python -m mpitrans rank-table merge`, which writes strings)")
        raise RankTableError(f"{where}.{key}: expected a string such as \"{value}\", "
                             f"got {_describe(value)}{hint}")
    if not value.strip():
        raise RankTableError(f"{where}.{key}: empty")
    if digits and not value.isdigit():
        raise RankTableError(f"{where}.{key}: expected a non-negative integer in a string, got {value!r}")
    return value


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise RankTableError(f"{where} must be an object, got {_describe(value)}")
    return value


def _nonempty_list(value: object, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise RankTableError(f"{where} must be a non-empty list")
    return value


@dataclass
class _TableReader:
    """One pass of `from_json` over a decoded table: the rules it applies, and every server, device
    address and rank met so far (so that a repeat names both places)."""

    source: str
    strict: bool
    contiguous: bool
    servers: dict[str, str] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)
    ranks: dict[int, str] = field(default_factory=dict)
    last_rank: int = -1

    def header(self, data: object) -> tuple[str, str, list]:
        """(version, status, raw server list) of the top-level object, checked."""
        source = self.source
        if not isinstance(data, dict):
            raise RankTableError(f"{source}: the top level must be a JSON object, got {_describe(data)}")
        if "server_list" not in data and "group_list" in data:
            raise RankTableError(f"{source}: this is an old (version 0.x, group_list) rank table; only the "
                                 "server_list format (version 1.0) is supported")
        for key in ("version", "server_count", "server_list", "status"):
            if key not in data:
                raise RankTableError(f"{source}: missing {key}")
        version = _string(data, "version", source)
        count = _string(data, "server_count", source, allow_int=not self.strict, digits=True)
        status = _string(data, "status", source)
        if status != "completed":
            raise RankTableError(f"{source}: status is {status!r}, not 'completed' (the table is unfinished)")
        servers = _nonempty_list(data["server_list"], f"{source}: server_list")
        if int(count) != len(servers):
            raise RankTableError(f"{source}: server_count is {count!r} but server_list has "
                                 f"{len(servers)} server(s)")
        return version, status, servers

    def server(self, i: int, raw: object) -> Server:
        where = f"server_list[{i}]"
        at = f"{self.source}: {where}"
        s = _object(raw, at)
        sid = _string(s, "server_id", at)
        first = repeat_of(self.servers, host_key(sid), where)
        if first:
            raise RankTableError(f"{at}: server {sid} is listed twice (also {first})")
        nic = s.get("host_nic_ip", "reserve")
        if not isinstance(nic, str):
            raise RankTableError(f"{at}.host_nic_ip: expected a string, got {_describe(nic)}")
        if s.get("device") is None:
            raise RankTableError(f"{at}: missing device")
        devices: list[Device] = []
        device_ids: dict[str, str] = {}
        for j, d in enumerate(_nonempty_list(s["device"], f"{at}.device")):
            prev = devices[-1].rank_id if devices else -1
            devices.append(self.device(f"{where}.device[{j}]", d, sid, device_ids, prev))
        return Server(sid, devices, nic)

    def device(self, where: str, raw: object, sid: str, device_ids: dict[str, str], prev: int) -> Device:
        """One device entry of server `sid`; `prev` is the rank of the entry above it on that server."""
        at = f"{self.source}: {where}"
        d = _object(raw, at)
        for k in ("device_id", "device_ip", "rank_id"):
            if k not in d:
                raise RankTableError(f"{at}: missing {k}")
        did = _string(d, "device_id", at, allow_int=not self.strict, digits=True)
        dip = _string(d, "device_ip", at)
        rid = int(_string(d, "rank_id", at, allow_int=not self.strict, digits=True))
        if not is_ip(dip):
            raise RankTableError(f"{at}.device_ip: {dip!r} is not an IP address")
        if first := repeat_of(device_ids, did, where):
            raise RankTableError(f"{at}: device_id {did} repeats {first} on server {sid}")
        if first := repeat_of(self.ips, host_key(dip), where):
            raise RankTableError(f"{at}: duplicate device_ip {dip} (also {first})")
        if first := repeat_of(self.ranks, rid, where):
            raise RankTableError(f"{at}: rank_id {rid} appears twice (also {first})")
        if rid <= prev:
            raise RankTableError(f"{at}: rank_id {rid} out of order (follows rank_id {prev} on server {sid}; "
                                 "ranks must increase down the list)")
        if not self.contiguous and rid <= self.last_rank:
            raise RankTableError(f"{at}: rank_id {rid} out of order (an earlier entry has rank_id "
                                 f"{self.last_rank}); merging would silently move it")
        self.last_rank = max(self.last_rank, rid)
        return Device(did, dip, rid)

    def check_contiguous(self) -> None:
        total = len(self.ranks)
        missing = sorted(set(range(total)) - set(self.ranks))
        if missing:
            extra = sorted(r for r in self.ranks if r >= total)
            raise RankTableError(
                f"{self.source}: rank ids must be 0..{total - 1} with none missing: rank {ranks_text(missing)} "
                f"missing, rank {ranks_text(extra)} beyond (at {self.ranks[extra[0]]})"
            )


def from_json(data: object, source: str = "rank table", *, strict: bool = True,
              contiguous: bool = True) -> RankTable:
    """Validate a decoded rank table and build a `RankTable`.

    `strict` demands strings everywhere (the format); `strict=False` also accepts integer ids, because
    MindFormers' own merge_hccl.py writes integer rank_ids and `merge` must be able to repair them.
    `contiguous` demands rank ids 0..M-1 with no gap or repeat (a usable table); `merge` turns it off for
    its inputs and checks only their order, since it renumbers anyway.
    """
    reader = _TableReader(source, strict, contiguous)
    version, status, servers_raw = reader.header(data)
    servers = [reader.server(i, s) for i, s in enumerate(servers_raw)]
    if contiguous:
        reader.check_contiguous()
    return RankTable(servers, version, status, source if source != "rank table" else None)


# ---------------------------------------------------------------------------------------------- files


def _read_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise RankTableError(f"{path}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise RankTableError(f"{path}: cannot read the rank table: {exc.strerror or exc}") from None


def load(path: str | os.PathLike, *, strict: bool = True, contiguous: bool = True) -> RankTable:
    """Read and validate a rank table; raises `RankTableError` naming the bad entry. `strict` and
    `contiguous` are `from_json`'s (`merge` relaxes them for its inputs)."""
    path = os.fspath(path)
    return from_json(_read_json(path), path, strict=strict, contiguous=contiguous)


def write(table: RankTable | dict, path: str | os.PathLike) -> str:
    """Write `table` as indented JSON (like hccl_tools.py); returns the absolute path."""
    data = table.to_json() if isinstance(table, RankTable) else table
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)
        f.write("\n")
    return path


def show(table: RankTable) -> str:
    """A readable listing of servers, devices and ranks, to check a table before a cluster uses it."""
    lines = [f"{table.label}: version {table.version}, {table.server_count} server(s), "
             f"{table.rank_count} rank(s), status {table.status}"]
    for i, s in enumerate(table.servers):
        lines.append(f"server {i}: {s.server_id}  ({len(s.devices)} device(s), ranks {ranks_text(s.ranks)})")
        lines.append(f"  {'rank':>5}  {'device':>6}  device_ip")
        for d in s.devices:
            lines.append(f"  {d.rank_id:>5}  {d.device_id:>6}  {d.device_ip}")
    return "\n".join(lines)
