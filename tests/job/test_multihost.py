"""No shared disk, for real: every MPI rank runs in its own mount namespace where its "host" directory is
bind-mounted onto one common path, so ranks of different hosts see different files at the same path.

Host A trained source ranks 0-3 and holds the strategies; host B trained ranks 4-7 and has neither the
strategies nor A's files. The outputs must land on the host of the MPI rank that writes them, equal
MindSpore's bytes, and no host may receive over MPI a source shard it could read itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.mpirun import HOST_WRAPPER, mpirun

pytestmark = [pytest.mark.mpi]

if os.geteuid() != 0 or shutil.which("unshare") is None:
    pytest.skip("mount namespaces need root and util-linux unshare", allow_module_level=True)


def _hosts(example: Path, tmp_path: Path, layout: dict[str, list[int]]) -> Path:
    """Create one directory per simulated host holding its source ranks; host A also the strategies."""
    for host, ranks in layout.items():
        data = tmp_path / host / "data"
        (data / "src").mkdir(parents=True)
        for r in ranks:
            shutil.copytree(example / "src" / f"rank_{r}", data / "src" / f"rank_{r}")
    for name in ("src_strategy.ckpt", "dst_strategy.ckpt"):
        shutil.copy(example / name, tmp_path / "hostA" / "data" / name)
    (tmp_path / "mnt").mkdir()
    return tmp_path


def _run(tmp_path: Path, mpi_hosts: list[str], extra: list[str] = (), mca: list[str] = ()):
    mnt = tmp_path / "mnt" / "data"
    args = ["--src-checkpoint", str(mnt / "src"), "--src-strategy", str(mnt / "src_strategy.ckpt"),
            "--dst-checkpoint", str(mnt / "dst"), "--dst-strategy", str(mnt / "dst_strategy.ckpt"),
            "--json-summary", str(tmp_path / "summary.json"), *extra]
    env = {"MPITRANS_TEST_MOUNT": str(tmp_path / "mnt"),
           "MPITRANS_TEST_HOSTS": ",".join(str(tmp_path / h) for h in mpi_hosts)}
    return mpirun(len(mpi_hosts), args, wrapper=["-x", "MPITRANS_TEST_MOUNT", "-x", "MPITRANS_TEST_HOSTS",
                                                 str(HOST_WRAPPER)], env=env, mca=mca)


def _assert_no_needless_network(tmp_path: Path, layout: dict[str, list[int]], mpi_hosts: list[str]) -> None:
    """Bytes crossing hosts only for shards the receiving host does not hold (same-host sharing is fine)."""
    summary = json.loads((tmp_path / "summary.json").read_text())
    for r in summary["ranks"]:
        host = mpi_hosts[r["rank"]]
        for src_rank, sender in r["received_from"]:
            if mpi_hosts[sender] != host:
                assert src_rank not in layout[host], f"rank {r['rank']} received rank_{src_rank} from another host"


def _assert_outputs(example: Path, tmp_path: Path, owner_host: dict[int, str]) -> None:
    for target, host in owner_host.items():
        rel = Path(f"rank_{target}") / f"checkpoint_{target}.ckpt"
        ours = tmp_path / host / "data" / "dst" / rel
        assert ours.exists(), f"target {target} should be on {host}"
        assert ours.read_bytes() == (example / "expected" / rel).read_bytes(), f"target {target} differs"
        for other in {"hostA", "hostB"} - {host}:
            assert not (tmp_path / other / "data" / "dst" / rel).exists()


@pytest.mark.parametrize("mca", [[], ["btl", "tcp,self"]], ids=["default-btl", "tcp-only"])
def test_two_hosts_without_shared_disk(example, tmp_path, mca):
    layout = {"hostA": [0, 1, 2, 3], "hostB": [4, 5, 6, 7]}
    _hosts(example, tmp_path, layout)
    mpi_hosts = ["hostA", "hostA", "hostB", "hostB"]
    proc = _run(tmp_path, mpi_hosts, mca=mca)
    assert proc.returncode == 0, proc.stderr
    _assert_outputs(example, tmp_path, {t: mpi_hosts[t] for t in range(4)})
    _assert_no_needless_network(tmp_path, layout, mpi_hosts)


def test_shards_spread_so_every_host_must_receive(example, tmp_path):
    # Each host holds half of each replica: A has 0,1,4,5 and B has 2,3,6,7, so targets need peers' bytes.
    layout = {"hostA": [0, 1, 4, 5], "hostB": [2, 3, 6, 7]}
    _hosts(example, tmp_path, layout)
    mpi_hosts = ["hostA", "hostB", "hostA", "hostB"]
    proc = _run(tmp_path, mpi_hosts)
    assert proc.returncode == 0, proc.stderr
    _assert_outputs(example, tmp_path, {t: mpi_hosts[t] for t in range(4)})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sum(r["bytes_received"] for r in summary["ranks"]) > 0
    _assert_no_needless_network(tmp_path, layout, mpi_hosts)


def test_shard_missing_everywhere_fails_before_writing(example, tmp_path):
    # rank_1 and its data-parallel replica rank_5 exist on no host.
    _hosts(example, tmp_path, {"hostA": [0, 2, 3], "hostB": [4, 6, 7]})
    proc = _run(tmp_path, ["hostA", "hostA", "hostB", "hostB"])
    assert proc.returncode != 0
    assert "rank_1" in proc.stderr and "rank_5" in proc.stderr and "needed by target" in proc.stderr
    for host in ("hostA", "hostB"):
        assert not (tmp_path / host / "data" / "dst").exists() or not any((tmp_path / host / "data" / "dst").rglob("*"))


def test_rank_table_places_targets_on_their_servers(example, tmp_path):
    layout = {"hostA": [0, 1, 2, 3], "hostB": [4, 5, 6, 7]}
    _hosts(example, tmp_path, layout)
    table = {"version": "1.0", "server_count": "2", "status": "completed", "server_list": [
        {"server_id": "hostB", "host_nic_ip": "reserve", "device": [
            {"device_id": str(i), "device_ip": f"192.0.2.{10 + i}", "rank_id": str(i)} for i in range(2)]},
        {"server_id": "hostA", "host_nic_ip": "reserve", "device": [
            {"device_id": str(i), "device_ip": f"192.0.2.{20 + i}", "rank_id": str(2 + i)} for i in range(2)]},
    ]}
    (tmp_path / "hostA" / "data" / "table.json").write_text(json.dumps(table))
    mpi_hosts = ["hostA", "hostA", "hostB", "hostB"]
    proc = _run(tmp_path, mpi_hosts, extra=["--rank-table", str(tmp_path / "mnt" / "data" / "table.json")])
    assert proc.returncode == 0, proc.stderr
    # Targets 0,1 belong to server hostB, targets 2,3 to hostA: the opposite of round robin.
    _assert_outputs(example, tmp_path, {0: "hostB", 1: "hostB", 2: "hostA", 3: "hostA"})
