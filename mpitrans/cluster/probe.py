"""This server's rank table, like MindFormers' hccl_tools.py: which devices, which device IPs, which address.

Device IPs come from what the user typed (`device_ips`), else `hccn_tool -i <id> -ip -g`, else the
`address_<id>=ip` lines of /etc/hccn.conf, so a table can be made on the server itself or by hand on
any machine. Unlike hccl_tools.py, every hardware lookup uses the *physical* device id (see `build`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from mpitrans.cluster.rank_table import Device, RankTable, RankTableError, Server, from_json, is_ip, write

HCCN_TOOL_FALLBACK = "/usr/local/Ascend/driver/tools/hccn_tool"


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


# ------------------------------------------------------------------------------------ device addresses


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
    return m.group(1) if out.returncode == 0 and m and is_ip(m.group(1)) else None


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


def _detected_ips(physical: list[str], hccn_conf: str, hccn_tool: str | None) -> dict[str, str]:
    """hccn_tool's answers, completed from `hccn_conf`; raises naming both sources when a device has none."""
    ips: dict[str, str] = {}
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
    return ips


def _selected_devices(device_num: str, visible_devices: str | Sequence[str] | None) -> tuple[list[int], list[str]]:
    """(logical ids, physical ids) of the devices `device_num` selects among the visible ones."""
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
    return logical, [visible[i] for i in logical]


# ------------------------------------------------------------------------------------------ the table


def generated_name(n: int, logical: Iterable[int], server_id: str) -> str:
    """hccl_tools.py's file name: hccl_{n}p_{logical ids run together}_{server_id}.json. Kept, so that
    scripts written for MindFormers find the files."""
    return f"hccl_{n}p_{''.join(map(str, logical))}_{server_id}.json"


class ServerTable(NamedTuple):
    """What `build` makes: one server's table, and the logical device ids it covers (they name the file)."""

    table: RankTable
    logical: list[int]

    @property
    def file_name(self) -> str:
        """hccl_tools.py's name for this table (see `generated_name`)."""
        return generated_name(len(self.logical), self.logical, self.table.servers[0].server_id)

    def save(self, out_dir: str | os.PathLike = ".") -> str:
        """Write the table under its hccl_tools.py name in `out_dir`; returns the absolute path."""
        return write(self.table, os.path.join(out_dir, self.file_name))


def build(device_num: str = "[0,8)", visible_devices: str | Sequence[str] | None = None,
          server_ip: str | None = None, device_ips: str | Sequence[str] | None = None,
          hccn_conf: str = "/etc/hccn.conf", hccn_tool: str | None = "hccn_tool") -> ServerTable:
    """The single-server table `generate` writes, and the logical device list (for the file name).

    Logical vs physical ids: `--device-num` counts *logical* devices, i.e. positions in the visible
    list (inside a container started with ASCEND_VISIBLE_DEVICES=4,5,6,7 there are four logical devices
    0..3). The rank table's `device_id` and every hardware query (hccn_tool -i, address_<id> in
    /etc/hccn.conf) use the *physical* id, visible[logical]. hccl_tools.py asked hccn_tool for the
    logical ids and then looked the answers up by physical id, so any visible list other than 0..7
    produced wrong device IPs or a KeyError. Here every lookup uses the physical id; `rank_id` is the
    logical position 0..n-1, as in hccl_tools.py.
    """
    logical, physical = _selected_devices(device_num, visible_devices)
    sid = (server_ip or "").strip() or primary_address()
    if device_ips:
        ips, source = _ips_by_hand(device_ips, physical), "--device-ips"
    else:
        ips, source = _detected_ips(physical, hccn_conf, hccn_tool), "hccn_tool/hccn.conf"
    devices = []
    for rank, p in enumerate(physical):
        if p not in ips:
            raise RankTableError(f"{source}: no IP for physical device {p}")
        if not is_ip(ips[p]):
            raise RankTableError(f"{source}: device {p} has address {ips[p]!r}, which is not an IP address")
        devices.append(Device(p, ips[p], rank))
    table = from_json(RankTable([Server(sid, devices)]).to_json(), "generated rank table")
    return ServerTable(table, logical)


def generate(device_num: str = "[0,8)", visible_devices: str | Sequence[str] | None = None,
             server_ip: str | None = None, device_ips: str | Sequence[str] | None = None,
             hccn_conf: str = "/etc/hccn.conf", out_dir: str = ".", *,
             hccn_tool: str | None = "hccn_tool") -> str:
    """Write this server's rank table like MindFormers' hccl_tools.py; returns the file's path.

    Device IPs come from `device_ips` when given (what you type beats what is detected), else from
    `hccn_tool -i <physical id> -ip -g` when that command exists, else from `address_<physical id>=ip`
    lines of `hccn_conf`. See `build` for the logical/physical device-id rule.
    """
    return build(device_num, visible_devices, server_ip, device_ips, hccn_conf, hccn_tool).save(out_dir)
