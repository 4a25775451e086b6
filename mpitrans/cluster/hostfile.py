"""An MPI hostfile and the matching launcher line, derived from a rank table.

A job that writes each target on the server that will load it needs one MPI process per device of
every server in the table; deriving the hostfile from the table keeps the two from drifting apart.
"""

from __future__ import annotations

import re
import shlex

from mpitrans.cluster.rank_table import RankTable, RankTableError

FORMATS = ("openmpi", "mpich")

# What a hostfile line may start with: a host name, IPv4 or IPv6 address (with %zone), optionally user@.
# Anything else (a space, ';', '#', a quote) would be read by the launcher as another token or a comment.
_HOSTFILE_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]*@)?[A-Za-z0-9:][A-Za-z0-9_.:%-]*")


def hostfile(table: RankTable, fmt: str = "openmpi") -> str:
    """One line per server in table order: `host slots=K` (Open MPI) or `host:K` (MPICH, Intel MPI).

    With the default by-slot mapping MPI rank i then lands on the server holding table rank i when the
    table lists ranks server by server; `rank_table_placement` does not depend on that. A server_id the
    launcher would misread is refused (HCCL itself does not look at its characters), since a hostfile
    that silently names another host sends shards to the wrong machine.
    """
    if fmt not in FORMATS:
        raise RankTableError(f"hostfile format {fmt!r}: expected openmpi or mpich")
    for i, s in enumerate(table.servers):
        if not _HOSTFILE_NAME.fullmatch(s.server_id):
            raise RankTableError(
                f"{table.label}: server_list[{i}].server_id {s.server_id!r} cannot go into a hostfile: a host "
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
