"""Which MPI process writes which target rank, so that each shard lands on the server that loads it.

Without a shared disk a target file is only useful on the server whose devices will load it. The rank
table says which server holds rank x; each MPI process says which host it runs on (its names and
addresses, or MPITRANS_SERVER_ID); the placement gives rank x to a process on that server.

MPI-free: the one collective step (every process learning every other's identities) is a function the
caller passes in, so the job's transport, or a test's fake, supplies it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence

from mpitrans.cluster.rank_table import RankTable, RankTableError, Server, host_key, ranks_text

SERVER_ID_ENV = "MPITRANS_SERVER_ID"
# What `engine.transform(placement=...)` takes: (target ranks, MPI process count) -> {target: MPI rank}.
Placement = Callable[[Sequence[int], int], dict[int, int]]


# ------------------------------------------------------------------------------------ who am I


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


def _host_names() -> set[str]:
    names: set[str] = set()
    for ask in (socket.gethostname, socket.getfqdn):
        try:
            names.add(ask())
        except OSError:
            pass
    return {n for n in names if n}


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
        return {host_key(x) for x in override.split(",") if x.strip()}
    ids: set[str] = {"localhost"}
    for name in _host_names():
        ids.update({name, name.split(".", 1)[0]})
        try:
            for info in socket.getaddrinfo(name, None):
                ids.add(str(info[4][0]))
        except OSError:
            pass
    ids.update(_ip_addr_output())
    return {host_key(x) for x in ids if x}


def far_servers(table: RankTable, ids: set[str] | None = None) -> list[str]:
    """The server_ids of `table` that are not this machine (`ids`: `local_host_ids()` by default)."""
    ids = local_host_ids() if ids is None else ids
    return [s.server_id for s in table.servers if host_key(s.server_id) not in ids]


def all_local(table: RankTable, ids: set[str] | None = None) -> bool:
    """True when every server of `table` is this machine (launch locally, no hostfile needed)."""
    return not far_servers(table, ids)


# ------------------------------------------------------------------------------------ placement


def _check_targets(table: RankTable, targets: Sequence[int]) -> list[int]:
    """The targets, sorted, once they are exactly the table's ranks (else the table is another job's)."""
    wanted = sorted(targets)
    if len(wanted) != table.rank_count:
        raise RankTableError(
            f"{table.label} has {table.rank_count} rank(s) but the destination layout has {len(wanted)} target "
            "rank(s); give the rank table of the cluster that will load the result (or no --rank-table)"
        )
    known = {r for s in table.servers for r in s.ranks}
    stray = [t for t in wanted if t not in known]
    if stray:
        raise RankTableError(f"{table.label}: target rank(s) {ranks_text(stray)} are not in the table")
    return wanted


def _unplaced(table: RankTable, lonely: list[Server], ids: list[frozenset[str]]) -> RankTableError:
    """The error for servers no MPI process runs on: what to fix, and how the processes identify."""
    s = lonely[0]
    seen = "; ".join(f"rank {r}: {', '.join(sorted(i)[:4])}{', ...' if len(i) > 4 else ''}"
                     for r, i in enumerate(ids[:8]))
    return RankTableError(
        f"{table.label}: no MPI rank runs on server {s.server_id} (table ranks {ranks_text(s.ranks)})"
        f"{' nor on ' + ', '.join(x.server_id for x in lonely[1:]) if len(lonely) > 1 else ''}. "
        f"Put that host in the hostfile (by the same name or address), or set {SERVER_ID_ENV} on its "
        f"ranks. MPI ranks identify as: {seen}{' ...' if len(ids) > 8 else ''}"
    )


def _owners(table: RankTable, ids: list[frozenset[str]]) -> dict[str, list[int]]:
    """server_id -> the MPI ranks running on it; every server must have one."""
    owners = {s.server_id: [r for r in range(len(ids)) if host_key(s.server_id) in ids[r]] for s in table.servers}
    lonely = [s for s in table.servers if not owners[s.server_id]]
    if lonely:
        raise _unplaced(table, lonely, ids)
    return owners


def _deal(table: RankTable, owners: dict[str, list[int]], wanted: set[int], nprocs: int) -> dict[int, int]:
    """Each server's targets to its MPI ranks, least loaded (then lowest) first."""
    load = [0] * nprocs
    result: dict[int, int] = {}
    for s in table.servers:
        for t in s.ranks:
            if t in wanted:
                r = min(owners[s.server_id], key=lambda x: (load[x], x))
                result[t] = r
                load[r] += 1
    return result


def rank_table_placement(table: RankTable, host_ids: Sequence[Iterable[str]]) -> Placement:
    """A `placement(targets, nprocs)` for `engine.transform` that writes each target on its own server.

    `host_ids[i]` are the identities of MPI rank i (`local_host_ids()` all-gathered). Target rank x goes
    to an MPI rank whose identities include the server_id of the server holding rank x, so the shard is
    written to the disk of the machine that will load it. A server's targets are dealt to its MPI ranks
    round robin in MPI rank order (least loaded first, which is the same thing when servers do not share
    MPI ranks, and stays balanced when they do, e.g. every server being this machine in a test).
    The result is a pure function of its inputs, so every rank computes the same placement.
    """
    ids = [frozenset(host_key(x) for x in h) for h in host_ids]

    def place(targets: Sequence[int], nprocs: int) -> dict[int, int]:
        if nprocs != len(ids):
            raise RankTableError(f"placement: identities of {len(ids)} MPI rank(s) for a job of {nprocs}")
        wanted = _check_targets(table, targets)
        return _deal(table, _owners(table, ids), set(wanted), nprocs)

    return place


def job_placement(table: RankTable, allgather_bytes: Callable[[bytes], list[bytes]]) -> Placement:
    """Collective (every MPI rank must call it): all-gather each rank's `local_host_ids()` with the
    transport's `allgather_bytes` and return `rank_table_placement` over them. Kept MPI-free by taking
    the all-gather as a function, so the engine's transport (or a test's fake) supplies it."""
    mine = json.dumps(sorted(local_host_ids())).encode()
    return rank_table_placement(table, [set(json.loads(b.decode())) for b in allgather_bytes(mine)])
