"""The cluster layer: HCCL rank tables, and which MPI process writes which target rank.

Ascend clusters describe "which device of which server is rank x" in a JSON rank table (RANK_TABLE_FILE),
made per server by MindFormers' `hccl_tools.py` and joined by `merge_hccl.py`. The checkpoint that
training rank x loads must end up on the server holding rank x. This package gives mpitrans the same
tools without Ascend hardware, checks tables strictly, derives MPI hostfiles, and places each target
rank on a process running on its server.

* `rank_table`: the model (`RankTable`, `Server`, `Device`), strict parsing (`from_json`, `load`),
  `write`, `show`;
* `probe`: this server's table: device selection, device IPs (hccn_tool, /etc/hccn.conf, by hand),
  primary address; `build` and `generate`, hccl_tools.py's file name (`generated_name`);
* `merge`: `merge.merge` / `merge_table` join per-server tables, renumbering ranks; merge_hccl.py's
  file name (`merged_name`);
* `hostfile`: `hostfile.hostfile` (Open MPI or MPICH lines) and `mpirun_command`;
* `placement`: this host's identities (`local_host_ids`, MPITRANS_SERVER_ID), `rank_table_placement`,
  the collective `job_placement`, `all_local`.

The command line (`python -m mpitrans rank-table`, or `python -m mpitrans.cluster`) is
`mpitrans.cli.rank_table`. Standard library only, and no MPI import: this runs in the launch scripts,
before `mpirun`. `merge` and `hostfile` name modules here; their functions of the same name are reached
through them, so that `import mpitrans.cluster.merge` always gives the module.
"""

from mpitrans.cluster import hostfile, merge
from mpitrans.cluster.hostfile import mpirun_command
from mpitrans.cluster.merge import merge_table, merged_name
from mpitrans.cluster.placement import (
    SERVER_ID_ENV,
    Placement,
    all_local,
    far_servers,
    job_placement,
    local_host_ids,
    rank_table_placement,
)
from mpitrans.cluster.probe import ServerTable, build, generate, generated_name, parse_device_num, primary_address
from mpitrans.cluster.rank_table import Device, RankTable, RankTableError, Server, from_json, load, show, write

__all__ = [
    "SERVER_ID_ENV", "Device", "Placement", "RankTable", "RankTableError", "Server", "ServerTable", "all_local",
    "build", "far_servers", "from_json", "generate", "generated_name", "hostfile", "job_placement", "load",
    "local_host_ids", "merge", "merge_table", "merged_name", "mpirun_command", "parse_device_num",
    "primary_address", "rank_table_placement", "show", "write",
]
