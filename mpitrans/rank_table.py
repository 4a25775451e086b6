"""HCCL rank tables (RANK_TABLE_FILE): generate, merge, validate, show, and map onto MPI.

Ascend clusters describe "which device of which server is rank x" in a JSON rank table, made per node by
MindFormers' `hccl_tools.py` and joined by `merge_hccl.py`. The checkpoint that training rank x loads
must end up on the server holding rank x. This module gives mpitrans the same tools without Ascend
hardware (so tables can be prepared anywhere), checks tables strictly (a wrong table fails late and
expensively, on a cluster), turns a table into an MPI hostfile, and provides a placement function that
makes each target rank be written by an MPI process running on the server that will load it.

Pure Python, standard library only, no MPI import: it runs in the launch scripts and before `mpirun`.

Format (version "1.0"; every value is a string)::

    {"version": "1.0", "server_count": "1",
     "server_list": [{"server_id": "192.168.1.196",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mpitrans.errors import MpitransError

HCCN_TOOL_FALLBACK = "/usr/local/Ascend/driver/tools/hccn_tool"
SERVER_ID_ENV = "MPITRANS_SERVER_ID"
# What `engine.transform(placement=...)` takes: (target ranks, MPI process count) -> {target: MPI rank}.
Placement = Callable[[Sequence[int], int], dict[int, int]]


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

    def server_of(self, rank: int) -> Server:
        """The server holding logical rank `rank`."""
        for s in self.servers:
            if rank in s.ranks:
                return s
        raise RankTableError(f"{self._name()}: no device has rank_id {rank}")

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

    def _name(self) -> str:
        return self.path or "rank table"


# ----------------------------------------------------------------------------------------- validation


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    except ValueError:
        return False


def _norm_id(text: str) -> str:
    """Canonical spelling of a host identity: lower case, no trailing dot, compressed IPv6."""
    s = text.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(s.split("%", 1)[0]))
    except ValueError:
        return s


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


def _ranks_text(ranks: Sequence[int]) -> str:
    if not ranks:
        return "-"
    if list(ranks) == list(range(ranks[0], ranks[0] + len(ranks))):
        return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
    return ",".join(map(str, ranks))


def from_json(data: object, source: str = "rank table", *, strict: bool = True,
              contiguous: bool = True) -> RankTable:
    """Validate a decoded rank table and build a `RankTable`.

    `strict` demands strings everywhere (the format); `strict=False` also accepts integer ids, because
    MindFormers' own merge_hccl.py writes integer rank_ids and `merge` must be able to repair them.
    `contiguous` demands rank ids 0..M-1 with no gap or repeat (a usable table); `merge` turns it off for
    its inputs and checks only their order, since it renumbers anyway.
    """
    if not isinstance(data, dict):
        raise RankTableError(f"{source}: the top level must be a JSON object, got {_describe(data)}")
    if "server_list" not in data and "group_list" in data:
        raise RankTableError(f"{source}: this is an old (version 0.x, group_list) rank table; only the "
                             "server_list format (version 1.0) is supported")
    for key in ("version", "server_count", "server_list", "status"):
        if key not in data:
            raise RankTableError(f"{source}: missing {key}")
    version = _string(data, "version", source)
    count = _string(data, "server_count", source, allow_int=not strict, digits=True)
    status = _string(data, "status", source)
    if status != "completed":
        raise RankTableError(f"{source}: status is {status!r}, not 'completed' (the table is unfinished)")
    servers_raw = data["server_list"]
    if not isinstance(servers_raw, list) or not servers_raw:
        raise RankTableError(f"{source}: server_list must be a non-empty list")
    if int(count) != len(servers_raw):
        raise RankTableError(f"{source}: server_count is {count!r} but server_list has "
                             f"{len(servers_raw)} server(s)")

    servers: list[Server] = []
    seen_server: dict[str, str] = {}
    seen_ip: dict[str, str] = {}
    seen_rank: dict[int, str] = {}
    last_rank = -1
    for i, s in enumerate(servers_raw):
        where = f"server_list[{i}]"
        if not isinstance(s, dict):
            raise RankTableError(f"{source}: {where} must be an object, got {_describe(s)}")
        sid = _string(s, "server_id", f"{source}: {where}")
        key = _norm_id(sid)
        if key in seen_server:
            raise RankTableError(f"{source}: {where}: server {sid} is listed twice (also {seen_server[key]})")
        seen_server[key] = where
        nic = s.get("host_nic_ip", "reserve")
        if not isinstance(nic, str):
            raise RankTableError(f"{source}: {where}.host_nic_ip: expected a string, got {_describe(nic)}")
        devs_raw = s.get("device")
        if devs_raw is None:
            raise RankTableError(f"{source}: {where}: missing device")
        if not isinstance(devs_raw, list) or not devs_raw:
            raise RankTableError(f"{source}: {where}.device must be a non-empty list")
        devices: list[Device] = []
        seen_dev: dict[str, str] = {}
        prev_in_server = -1
        for j, d in enumerate(devs_raw):
            dwhere = f"{where}.device[{j}]"
            if not isinstance(d, dict):
                raise RankTableError(f"{source}: {dwhere} must be an object, got {_describe(d)}")
            for k in ("device_id", "device_ip", "rank_id"):
                if k not in d:
                    raise RankTableError(f"{source}: {dwhere}: missing {k}")
            did = _string(d, "device_id", f"{source}: {dwhere}", allow_int=not strict, digits=True)
            dip = _string(d, "device_ip", f"{source}: {dwhere}")
            rid = int(_string(d, "rank_id", f"{source}: {dwhere}", allow_int=not strict, digits=True))
            if not _is_ip(dip):
                raise RankTableError(f"{source}: {dwhere}.device_ip: {dip!r} is not an IP address")
            if did in seen_dev:
                raise RankTableError(f"{source}: {dwhere}: device_id {did} repeats {seen_dev[did]} "
                                     f"on server {sid}")
            seen_dev[did] = dwhere
            ip_key = _norm_id(dip)
            if ip_key in seen_ip:
                raise RankTableError(f"{source}: {dwhere}: duplicate device_ip {dip} "
                                     f"(also {seen_ip[ip_key]})")
            seen_ip[ip_key] = dwhere
            if rid in seen_rank:
                raise RankTableError(f"{source}: {dwhere}: rank_id {rid} appears twice "
                                     f"(also {seen_rank[rid]})")
            seen_rank[rid] = dwhere
            if rid <= prev_in_server:
                raise RankTableError(f"{source}: {dwhere}: rank_id {rid} out of order (follows rank_id "
                                     f"{prev_in_server} on server {sid}; ranks must increase down the list)")
            if not contiguous and rid <= last_rank:
                raise RankTableError(f"{source}: {dwhere}: rank_id {rid} out of order (an earlier entry has "
                                     f"rank_id {last_rank}); merging would silently move it")
            prev_in_server = rid
            last_rank = max(last_rank, rid)
            devices.append(Device(did, dip, rid))
        servers.append(Server(sid, devices, nic))

    if contiguous:
        total = len(seen_rank)
        missing = sorted(set(range(total)) - set(seen_rank))
        if missing:
            extra = sorted(r for r in seen_rank if r >= total)
            raise RankTableError(
                f"{source}: rank ids must be 0..{total - 1} with none missing: rank {_ranks_text(missing)} "
                f"missing, rank {_ranks_text(extra)} beyond (at {seen_rank[extra[0]]})"
            )
    return RankTable(servers, version, status, source if source != "rank table" else None)


def _read_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise RankTableError(f"{path}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise RankTableError(f"{path}: cannot read the rank table: {exc.strerror or exc}") from None


def load(path: str | os.PathLike) -> RankTable:
    """Read and validate a rank table; raises `RankTableError` naming the bad entry."""
    path = os.fspath(path)
    return from_json(_read_json(path), path)


def write(table: RankTable | dict, path: str | os.PathLike) -> str:
    """Write `table` as indented JSON (like hccl_tools.py); returns the absolute path."""
    data = table.to_json() if isinstance(table, RankTable) else table
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)
        f.write("\n")
    return path


# ------------------------------------------------------------------------------------------- generate


def parse_device_num(text: str) -> tuple[int, int]:
    """'[0,8)' or '[0,8]' or '8' -> (0, 8): the logical device range, always half-open.

    hccl_tools.py reads only the two numbers and ignores the closing bracket, so its documented
    ``--device_num [0,8]`` means devices 0..7 exactly like ``[0,8)``. mpitrans keeps that reading so
    commands copied from MindFormers docs produce the same table.
    """
    s = text.strip()
    m = re.fullmatch(r"[\[(]?\s*(\d+)\s*,\s*(\d+)\s*[\])]?", s)
    if m:
        first, last = int(m.group(1)), int(m.group(2))
    elif s.isdigit():
        first, last = 0, int(s)
    else:
        raise RankTableError(f"--device-num {text!r}: expected a range such as [0,8) "
                             "(or [0,8], read the same)")
    if first >= last:
        raise RankTableError(f"--device-num {text!r}: the first device must be below the last")
    return first, last


def _split_list(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [str(x).strip() for x in items if str(x).strip()]


def primary_address() -> str:
    """This host's outward-facing IPv4 address.

    A UDP socket "connected" to a routable address reveals the source address the kernel would use
    without sending anything. hccl_tools.py used gethostbyname(gethostname()), which is 127.0.1.1 on
    many Debian/Ubuntu hosts and makes a table no other node can use; that is only the fallback here.
    """
    for probe in ("10.255.255.255", "192.0.2.1"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 1))
                ip = sock.getsockname()[0]
            if ip and not ip.startswith("0."):
                return ip
        except OSError:
            continue
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _hccn_tool_path(tool: str | None) -> str | None:
    if not tool:
        return None
    found = shutil.which(tool)
    if found:
        return found
    if tool == "hccn_tool" and os.access(HCCN_TOOL_FALLBACK, os.X_OK):
        return HCCN_TOOL_FALLBACK
    return None


def _ip_from_hccn_tool(exe: str, device_id: str) -> str | None:
    try:
        out = subprocess.run([exe, "-i", device_id, "-ip", "-g"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"ipaddr\s*:\s*(\S+)", out.stdout)
    return m.group(1) if out.returncode == 0 and m and _is_ip(m.group(1)) else None


def _ips_from_hccn_conf(path: str) -> dict[str, str] | None:
    """`address_<physical id>=<ip>` lines of /etc/hccn.conf; None when the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return None
    ips: dict[str, str] = {}
    for line in lines:
        m = re.fullmatch(r"\s*address_(\d+)\s*=\s*(\S+)\s*", line)
        if m:
            ips[m.group(1)] = m.group(2)
    return ips


def _ips_by_hand(device_ips: str | Sequence[str], physical: list[str]) -> dict[str, str]:
    """`ip,ip,...` in device order, or `id=ip,...` keyed by physical id."""
    items = _split_list(device_ips)
    if items and all("=" in x for x in items):
        return {k.strip(): v.strip() for k, v in (x.split("=", 1) for x in items)}
    if any("=" in x for x in items):
        raise RankTableError("--device-ips: use either ip,ip,... or id=ip,id=ip,..., not a mix")
    if len(items) != len(physical):
        raise RankTableError(f"--device-ips lists {len(items)} address(es) but {len(physical)} device(s) are "
                             f"selected (physical ids {','.join(physical)}); give one per device, in order")
    return dict(zip(physical, items, strict=True))


def build(device_num: str = "[0,8)", visible_devices: str | Sequence[str] | None = None,
          server_ip: str | None = None, device_ips: str | Sequence[str] | None = None,
          hccn_conf: str = "/etc/hccn.conf",
          hccn_tool: str | None = "hccn_tool") -> tuple[RankTable, list[int]]:
    """The single-server table `generate` writes, and the logical device list (for the file name).

    Logical vs physical ids: `--device-num` counts *logical* devices, i.e. positions in the visible
    list (inside a container started with ASCEND_VISIBLE_DEVICES=4,5,6,7 there are four logical devices
    0..3). The rank table's `device_id` and every hardware query (hccn_tool -i, address_<id> in
    /etc/hccn.conf) use the *physical* id, visible[logical]. hccl_tools.py asked hccn_tool for the
    logical ids and then looked the answers up by physical id, so any visible list other than 0..7
    produced wrong device IPs or a KeyError. Here every lookup uses the physical id; `rank_id` is the
    logical position 0..n-1, as in hccl_tools.py.
    """
    first, last = parse_device_num(device_num)
    visible = _split_list(visible_devices) or [str(i) for i in range(max(last, 8))]
    bad = [v for v in visible if not v.isdigit()]
    if bad:
        raise RankTableError(f"--visible-devices: {','.join(bad)} is not a device number")
    if len(set(visible)) != len(visible):
        raise RankTableError(f"--visible-devices {','.join(visible)}: a device is listed twice")
    if last > len(visible):
        raise RankTableError(
            f"--device-num [{first},{last}) selects logical devices up to {last - 1}, but only "
            f"{len(visible)} are visible ({','.join(visible)}); --device-num counts positions in the "
            f"visible list, e.g. [0,{len(visible)}) for all of them"
        )
    logical = list(range(first, last))
    physical = [visible[i] for i in logical]

    sid = (server_ip or "").strip() or primary_address()
    if device_ips:
        ips = _ips_by_hand(device_ips, physical)
        source = "--device-ips"
    else:
        ips = {}
        exe = _hccn_tool_path(hccn_tool)
        if exe:
            for p in physical:
                ip = _ip_from_hccn_tool(exe, p)
                if ip:
                    ips[p] = ip
        conf = None
        if len(ips) < len(physical):
            conf = _ips_from_hccn_conf(hccn_conf)
            for p in physical:
                if p not in ips and conf and p in conf:
                    ips[p] = conf[p]
        missing = [p for p in physical if p not in ips]
        if missing:
            conf_note = "not readable" if conf is None else f"no address_{missing[0]} line"
            tried = [f"hccn_tool ({'not found' if not exe else 'no answer for those devices'})",
                     f"{hccn_conf} ({conf_note})"]
            raise RankTableError(
                f"no device IP for physical device(s) {','.join(missing)}: tried {'; '.join(tried)}. "
                "Give them by hand with --device-ips ip,ip,... (one per device, in order)"
            )
        source = "hccn_tool/hccn.conf"
    devices = []
    for rank, p in enumerate(physical):
        if p not in ips:
            raise RankTableError(f"{source}: no IP for physical device {p}")
        if not _is_ip(ips[p]):
            raise RankTableError(f"{source}: device {p} has address {ips[p]!r}, which is not an IP address")
        devices.append(Device(p, ips[p], rank))
    table = from_json(RankTable([Server(sid, devices)]).to_json(), "generated rank table")
    return table, logical


def generated_name(n: int, logical: Iterable[int], server_id: str) -> str:
    """hccl_tools.py's file name: hccl_{n}p_{logical ids run together}_{server_id}.json."""
    return f"hccl_{n}p_{''.join(map(str, logical))}_{server_id}.json"


def generate(device_num: str = "[0,8)", visible_devices: str | Sequence[str] | None = None,
             server_ip: str | None = None, device_ips: str | Sequence[str] | None = None,
             hccn_conf: str = "/etc/hccn.conf", out_dir: str = ".", *,
             hccn_tool: str | None = "hccn_tool") -> str:
    """Write this server's rank table like MindFormers' hccl_tools.py; returns the file's path.

    Device IPs come from `device_ips` when given (what you type beats what is detected), else from
    `hccn_tool -i <physical id> -ip -g` when that command exists, else from `address_<physical id>=ip`
    lines of `hccn_conf`. See `build` for the logical/physical device-id rule.
    """
    table, logical = build(device_num, visible_devices, server_ip, device_ips, hccn_conf, hccn_tool)
    name = generated_name(len(logical), logical, table.servers[0].server_id)
    return write(table, os.path.join(out_dir, name))


# ---------------------------------------------------------------------------------------------- merge


def _ip_sort_key(server_id: str) -> tuple:
    """IPv4 numerically, then IPv6 numerically, then host names alphabetically."""
    try:
        ip = ipaddress.ip_address(server_id.split("%", 1)[0])
        return (0 if ip.version == 4 else 1, int(ip), "")
    except ValueError:
        return (2, 0, server_id.lower())


def merged_name(table: RankTable | dict) -> str:
    """merge_hccl.py's file name: hccl_{servers}s_{ranks}p.json."""
    t = table if isinstance(table, RankTable) else from_json(table)
    return f"hccl_{t.server_count}s_{t.rank_count}p.json"


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
    if not paths:
        raise RankTableError("merge: no rank table given")
    entries: list[tuple[Server, str]] = []
    for p in paths:
        p = os.fspath(p)
        t = from_json(_read_json(p), p, strict=False, contiguous=False)
        entries.extend((s, f"{p} server_list[{i}]") for i, s in enumerate(t.servers))
    seen: dict[str, str] = {}
    seen_ip: dict[str, str] = {}
    for s, where in entries:
        key = _norm_id(s.server_id)
        if key in seen:
            raise RankTableError(f"merge: server {s.server_id} appears twice: {seen[key]} and {where} "
                                 "(was one node's table given twice?)")
        seen[key] = where
        for j, d in enumerate(s.devices):
            ip = _norm_id(d.device_ip)
            if ip in seen_ip:
                raise RankTableError(f"merge: duplicate device_ip {d.device_ip}: {seen_ip[ip]} and "
                                     f"{where}.device[{j}]")
            seen_ip[ip] = f"{where}.device[{j}]"
    servers = [s for s, _ in entries]
    if sort_by_ip:
        servers.sort(key=lambda s: _ip_sort_key(s.server_id))
    rank = 0
    merged: list[Server] = []
    for s in servers:
        devs = []
        for d in s.devices:
            devs.append(Device(d.device_id, d.device_ip, rank))
            rank += 1
        merged.append(Server(s.server_id, devs, s.host_nic_ip))
    table = from_json(RankTable(merged).to_json(), "merged rank table")
    if out is not None:
        write(table, out)
    return table.to_json()


# ------------------------------------------------------------------------------------ hostfile & show


# What a hostfile line may start with: a host name, IPv4 or IPv6 address (with %zone), optionally user@.
# Anything else (a space, ';', '#', a quote) would be read by the launcher as another token or a comment.
_HOSTFILE_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]*@)?[A-Za-z0-9:][A-Za-z0-9_.:%-]*")


def hostfile(table: RankTable, fmt: str = "openmpi") -> str:
    """One line per server in table order: `host slots=K` (Open MPI) or `host:K` (MPICH, Intel MPI).

    With the default by-slot mapping MPI rank i then lands on the server holding table rank i when the
    table lists ranks server by server; `rank_table_placement` does not depend on that.
    """
    if fmt not in ("openmpi", "mpich"):
        raise RankTableError(f"hostfile format {fmt!r}: expected openmpi or mpich")
    for i, s in enumerate(table.servers):
        if not _HOSTFILE_NAME.fullmatch(s.server_id):
            raise RankTableError(
                f"{table._name()}: server_list[{i}].server_id {s.server_id!r} cannot go into a hostfile: a host "
                "name or address there is letters, digits and . - _ : % @ only (no spaces, ';', '#' or "
                "quotes); give the server's address or host name"
            )
    line = "{} slots={}" if fmt == "openmpi" else "{}:{}"
    return "".join(line.format(s.server_id, len(s.devices)) + "\n" for s in table.servers)


def mpirun_command(table: RankTable, hostfile_path: str, fmt: str = "openmpi") -> str:
    """The launcher line matching `hostfile(table, fmt)` (`mpirun -n M -hostfile FILE`)."""
    if fmt == "mpich":
        return f"mpiexec -n {table.rank_count} -f {shlex.quote(hostfile_path)}"
    return f"mpirun -n {table.rank_count} -hostfile {shlex.quote(hostfile_path)}"


def show(table: RankTable) -> str:
    """A readable listing of servers, devices and ranks."""
    lines = [f"{table._name()}: version {table.version}, {table.server_count} server(s), "
             f"{table.rank_count} rank(s), status {table.status}"]
    for i, s in enumerate(table.servers):
        lines.append(f"server {i}: {s.server_id}  ({len(s.devices)} device(s), ranks {_ranks_text(s.ranks)})")
        lines.append(f"  {'rank':>5}  {'device':>6}  device_ip")
        for d in s.devices:
            lines.append(f"  {d.rank_id:>5}  {d.device_id:>6}  {d.device_ip}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ placement


def _ip_addr_output() -> set[str]:
    """Addresses from `ip -o addr` (every interface), when the command exists."""
    exe = shutil.which("ip")
    if not exe:
        return set()
    try:
        out = subprocess.run([exe, "-o", "addr"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {m.group(1) for m in re.finditer(r"\binet6?\s+([0-9A-Fa-f:.]+)(?:/\d+)?", out)}


def local_host_ids(environ: dict[str, str] | None = None) -> set[str]:
    """Names and addresses by which a rank table may refer to this host (normalized: lower case).

    Host name, short host name, FQDN, "localhost", the addresses the names resolve to, and every
    address of every interface (`ip -o addr`). MPITRANS_SERVER_ID (comma-separated allowed) replaces
    all of them: for hosts known to the table by an address this process cannot see (NAT, containers),
    and for tests that pretend to be several hosts on one machine.
    """
    env = os.environ if environ is None else environ
    override = env.get(SERVER_ID_ENV, "").strip()
    if override:
        return {_norm_id(x) for x in override.split(",") if x.strip()}
    ids: set[str] = {"localhost"}
    names: set[str] = set()
    try:
        names.add(socket.gethostname())
    except OSError:
        pass
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    for name in list(names):
        if not name:
            continue
        ids.update({name, name.split(".", 1)[0]})
        try:
            for info in socket.getaddrinfo(name, None):
                ids.add(str(info[4][0]))
        except OSError:
            pass
    ids.update(_ip_addr_output())
    return {_norm_id(x) for x in ids if x}


def rank_table_placement(table: RankTable,
                         host_ids: Sequence[Iterable[str]]) -> Placement:
    """A `placement(targets, nprocs)` for `engine.transform` that writes each target on its own server.

    `host_ids[i]` are the identities of MPI rank i (`local_host_ids()` all-gathered). Target rank x goes
    to an MPI rank whose identities include the server_id of the server holding rank x, so the shard is
    written to the disk of the machine that will load it. A server's targets are dealt to its MPI ranks
    round robin in MPI rank order (least loaded first, which is the same thing when servers do not share
    MPI ranks, and stays balanced when they do, e.g. every server being this machine in a test).
    The result is a pure function of its inputs, so every rank computes the same placement.
    """
    ids = [frozenset(_norm_id(x) for x in h) for h in host_ids]
    name = table._name()

    def place(targets: Sequence[int], nprocs: int) -> dict[int, int]:
        if nprocs != len(ids):
            raise RankTableError(f"placement: identities of {len(ids)} MPI rank(s) for a job of {nprocs}")
        wanted = sorted(targets)
        if len(wanted) != table.rank_count:
            raise RankTableError(
                f"{name} has {table.rank_count} rank(s) but the destination layout has {len(wanted)} target "
                "rank(s); give the rank table of the cluster that will load the result (or no --rank-table)"
            )
        known = {r for s in table.servers for r in s.ranks}
        stray = [t for t in wanted if t not in known]
        if stray:
            raise RankTableError(f"{name}: target rank(s) {_ranks_text(stray)} are not in the table")
        owners = {s.server_id: [r for r in range(nprocs) if _norm_id(s.server_id) in ids[r]]
                  for s in table.servers}
        lonely = [s for s in table.servers if not owners[s.server_id]]
        if lonely:
            s = lonely[0]
            seen = "; ".join(f"rank {r}: {', '.join(sorted(i)[:4])}{', ...' if len(i) > 4 else ''}"
                             for r, i in enumerate(ids[:8]))
            raise RankTableError(
                f"{name}: no MPI rank runs on server {s.server_id} (table ranks {_ranks_text(s.ranks)})"
                f"{' nor on ' + ', '.join(x.server_id for x in lonely[1:]) if len(lonely) > 1 else ''}. "
                f"Put that host in the hostfile (by the same name or address), or set {SERVER_ID_ENV} on its "
                f"ranks. MPI ranks identify as: {seen}{' ...' if len(ids) > 8 else ''}"
            )
        load = [0] * nprocs
        result: dict[int, int] = {}
        wanted_set = set(wanted)
        for s in table.servers:
            for t in s.ranks:
                if t in wanted_set:
                    r = min(owners[s.server_id], key=lambda x: (load[x], x))
                    result[t] = r
                    load[r] += 1
        return result

    return place


def job_placement(table: RankTable,
                  allgather_bytes: Callable[[bytes], list[bytes]]) -> Placement:
    """Collective (every MPI rank must call it): all-gather each rank's `local_host_ids()` with the
    transport's `allgather_bytes` and return `rank_table_placement` over them. Kept MPI-free by taking
    the all-gather as a function, so the engine's transport (or a test's fake) supplies it."""
    mine = json.dumps(sorted(local_host_ids())).encode()
    return rank_table_placement(table, [set(json.loads(b.decode())) for b in allgather_bytes(mine)])


def all_local(table: RankTable, ids: set[str] | None = None) -> bool:
    """True when every server of `table` is this machine (launch locally, no hostfile needed)."""
    ids = local_host_ids() if ids is None else ids
    return all(_norm_id(s.server_id) in ids for s in table.servers)


# ------------------------------------------------------------------------------------------------ CLI

_EPILOG = """\
examples:
  # this server's table, like MindFormers' hccl_tools.py (device IPs from hccn_tool or /etc/hccn.conf)
  python -m mpitrans rank-table generate --device-num "[0,8)"
  # without Ascend hardware: give the server address and device IPs by hand
  python -m mpitrans rank-table generate --device-num "[0,4)" --server-ip 192.168.1.196 \\
      --device-ips 192.168.100.101,192.168.101.101,192.168.102.101,192.168.103.101
  # inside a container that sees physical devices 4-7 only
  python -m mpitrans rank-table generate --visible-devices 4,5,6,7 --device-num "[0,4)"

  # join per-node tables (like merge_hccl.py); --sort-by-ip orders servers by numeric address
  python -m mpitrans rank-table merge hccl_8p_*.json --sort-by-ip --out rank_table_16.json

  # hostfile + mpirun line for the cluster, then check who holds which rank
  python -m mpitrans rank-table hostfile rank_table_16.json -o hosts
  python -m mpitrans rank-table show rank_table_16.json
"""


def _parser() -> argparse.ArgumentParser:
    from mpitrans.cli.main import DEBUG_HELP, ArgumentParser  # one-line usage errors, like every subcommand

    p = ArgumentParser(
        prog="python -m mpitrans rank-table",
        description="Make, join and inspect HCCL rank tables (RANK_TABLE_FILE) and derive MPI hostfiles "
        "from them. Works without Ascend hardware.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="cmd", metavar="{generate,merge,hostfile,show,is-local}")
    sub.required = True

    g = sub.add_parser("generate", help="write this server's rank table (like hccl_tools.py)",
                       description="Write hccl_{N}p_{ids}_{server}.json for this server, like MindFormers' "
                       "hccl_tools.py, with physical device ids handled correctly.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--device-num", "--device_num", dest="device_num", default="[0,8)", metavar="RANGE",
                   help="logical devices to use, half-open: [0,8) = 0..7. [0,8] is read the same way, as "
                   "hccl_tools.py does (default: [0,8))")
    g.add_argument("--visible-devices", "--visible_devices", dest="visible_devices", metavar="IDS",
                   help="physical ids of the devices this system sees, in logical order, e.g. 4,5,6,7 in a "
                   "container given the last four chips (default: 0,1,...,7)")
    g.add_argument("--server-ip", "--server_ip", dest="server_ip", metavar="IP",
                   help="server_id to write (default: this host's primary address)")
    g.add_argument("--device-ips", "--device_ips", dest="device_ips", metavar="IPS",
                   help="device IPs by hand, one per selected device in order (ip,ip,...) or by physical id "
                   "(4=ip,5=ip,...); used instead of hccn_tool and /etc/hccn.conf")
    g.add_argument("--hccn-conf", "--hccn_conf", dest="hccn_conf", default="/etc/hccn.conf", metavar="FILE",
                   help="address_<id>=ip file read when hccn_tool is unavailable (default: /etc/hccn.conf)")
    g.add_argument("--hccn-tool", "--hccn_tool", dest="hccn_tool", default="hccn_tool", metavar="CMD",
                   help="hccn_tool command asked for device IPs (default: hccn_tool on PATH, else "
                   f"{HCCN_TOOL_FALLBACK}); 'none' to skip it")
    g.add_argument("--out-dir", "-o", dest="out_dir", default=".", metavar="DIR",
                   help="directory for the table (default: current directory)")

    m = sub.add_parser("merge", help="join per-node tables into one (like merge_hccl.py)",
                       description="Join per-node rank tables; rank_id is renumbered 0..M-1 in the order "
                       "the files are given (or by numeric server IP with --sort-by-ip).")
    m.add_argument("tables", nargs="+", metavar="TABLE")
    m.add_argument("--out", "-o", metavar="FILE",
                   help="merged table to write (default: hccl_{S}s_{M}p.json, like merge_hccl.py)")
    m.add_argument("--sort-by-ip", "--sort_by_ip", dest="sort_by_ip", action="store_true",
                   help="order servers by numeric IP (10.0.0.9 before 10.0.0.10) instead of argument order")

    h = sub.add_parser("hostfile", help="write an MPI hostfile and print the mpirun line",
                       description="One line per server, slots = its device count, in table order; prints "
                       "the matching mpirun line. Without -o the hostfile goes to stdout.")
    h.add_argument("table", metavar="RANK_TABLE")
    h.add_argument("--format", choices=["openmpi", "mpich"], default="openmpi",
                   help="openmpi: 'host slots=K' (default); mpich: 'host:K' (MPICH, Intel MPI)")
    h.add_argument("-o", "--output", dest="output", metavar="FILE", help="hostfile to write")

    s = sub.add_parser("show", help="list servers, devices and ranks")
    s.add_argument("table", metavar="RANK_TABLE")

    lo = sub.add_parser("is-local", help="exit 0 when every server is this machine (for launch scripts)",
                        description="Exit 0 when every server of the table is this machine (used by "
                        "launch/run_rank_table.sh to launch without a hostfile), 1 otherwise.")
    lo.add_argument("table", metavar="RANK_TABLE")
    return p


def main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """`python -m mpitrans rank-table ...`; returns the exit status. A user error is one line
    `mpitrans: error: ...` (status 1, or 2 for a bad command line); `--debug` adds its traceback."""
    from mpitrans.cli.main import take_flag

    flagged, argv = take_flag(list(sys.argv[1:] if argv is None else argv), "--debug")
    debug = debug or flagged
    try:
        args = _parser().parse_args(argv)
        if args.cmd == "generate":
            tool = None if args.hccn_tool.lower() == "none" else args.hccn_tool
            table, logical = build(args.device_num, args.visible_devices, args.server_ip, args.device_ips,
                                   args.hccn_conf, tool)
            srv = table.servers[0]
            print(f"server_id: {srv.server_id}")
            print(f"logical devices: {logical}  physical: {[d.device_id for d in srv.devices]}")
            for d in srv.devices:
                print(f"rank_id:{d.rank_id}, device_id:{d.device_id}, device_ip:{d.device_ip}")
            name = generated_name(len(logical), logical, srv.server_id)
            path = write(table, os.path.join(args.out_dir, name))
            print(f"rank table written to {path}")
        elif args.cmd == "merge":
            data = merge(args.tables, sort_by_ip=args.sort_by_ip)
            path = write(data, args.out or merged_name(data))
            t = from_json(data)
            for s in t.servers:
                print(f"{s.server_id}: ranks {_ranks_text(s.ranks)}")
            print(f"merged {t.server_count} server(s), {t.rank_count} rank(s) into {path}")
        elif args.cmd == "hostfile":
            table = load(args.table)
            text = hostfile(table, args.format)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(text)
                print(mpirun_command(table, args.output, args.format))
            else:
                sys.stdout.write(text)
                print(f"# {mpirun_command(table, 'HOSTFILE', args.format)}")
        elif args.cmd == "show":
            print(show(load(args.table)))
        elif args.cmd == "is-local":
            table = load(args.table)
            ids = local_host_ids()
            far = [s.server_id for s in table.servers if _norm_id(s.server_id) not in ids]
            if far:
                print(f"not this machine: {', '.join(far)}")
                return 1
            print("every server is this machine")
        return 0
    except (MpitransError, OSError) as exc:
        if debug:
            import traceback

            traceback.print_exc()
        msg = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"mpitrans: error: {msg}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
