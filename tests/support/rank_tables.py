"""Rank-table fixtures shared by tests/cluster and tests/cli: the documentation's servers and device IPs,
the checked-in example tables, an /etc/hccn.conf writer."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
