"""`python -m mpitrans rank-table ...`: make, join and inspect HCCL rank tables, derive MPI hostfiles.

Only the command line lives here: each subcommand parses its flags, calls `mpitrans.cluster`, and
prints. Works without Ascend hardware, in one process (see `mpitrans.cli.main._run_rank_table`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from mpitrans.cli.main import DEBUG_FLAG, _run_local, take_flag
from mpitrans.cli.options import RANK_TABLE, build_parser
from mpitrans.cluster.hostfile import FORMATS, hostfile, mpirun_command
from mpitrans.cluster.merge import merge_table, merged_name
from mpitrans.cluster.placement import far_servers
from mpitrans.cluster.probe import HCCN_TOOL_FALLBACK, build
from mpitrans.cluster.rank_table import load, ranks_text, show, write

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

# ----------------------------------------------------------------------------------------- commands


def _generate(args: argparse.Namespace) -> int:
    tool = None if args.hccn_tool.lower() == "none" else args.hccn_tool
    made = build(args.device_num, args.visible_devices, args.server_ip, args.device_ips, args.hccn_conf, tool)
    srv = made.table.servers[0]
    print(f"server_id: {srv.server_id}")
    print(f"logical devices: {made.logical}  physical: {[d.device_id for d in srv.devices]}")
    for d in srv.devices:
        print(f"rank_id:{d.rank_id}, device_id:{d.device_id}, device_ip:{d.device_ip}")
    print(f"rank table written to {made.save(args.out_dir)}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    table = merge_table(args.tables, sort_by_ip=args.sort_by_ip)
    path = write(table, args.out or merged_name(table))
    for s in table.servers:
        print(f"{s.server_id}: ranks {ranks_text(s.ranks)}")
    print(f"merged {table.server_count} server(s), {table.rank_count} rank(s) into {path}")
    return 0


def _hostfile(args: argparse.Namespace) -> int:
    table = load(args.table)
    text = hostfile(table, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(mpirun_command(table, args.output, args.format))
    else:
        sys.stdout.write(text)
        print(f"# {mpirun_command(table, 'HOSTFILE', args.format)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(show(load(args.table)))
    return 0


def _is_local(args: argparse.Namespace) -> int:
    far = far_servers(load(args.table))
    if far:
        print(f"not this machine: {', '.join(far)}")
        return 1
    print("every server is this machine")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": _generate, "merge": _merge, "hostfile": _hostfile, "show": _show, "is-local": _is_local,
}

# ------------------------------------------------------------------------------------------- parser


def _add_generate(sub: argparse._SubParsersAction) -> None:
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


def _add_merge(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("merge", help="join per-node tables into one (like merge_hccl.py)",
                       description="Join per-node rank tables; rank_id is renumbered 0..M-1 in the order "
                       "the files are given (or by numeric server IP with --sort-by-ip).")
    m.add_argument("tables", nargs="+", metavar="TABLE")
    m.add_argument("--out", "-o", metavar="FILE",
                   help="merged table to write (default: hccl_{S}s_{M}p.json, like merge_hccl.py)")
    m.add_argument("--sort-by-ip", "--sort_by_ip", dest="sort_by_ip", action="store_true",
                   help="order servers by numeric IP (10.0.0.9 before 10.0.0.10) instead of argument order")


def _add_inspectors(sub: argparse._SubParsersAction) -> None:
    """The subcommands that read one table: hostfile, show, is-local."""
    h = sub.add_parser("hostfile", help="write an MPI hostfile and print the mpirun line",
                       description="One line per server, slots = its device count, in table order; prints "
                       "the matching mpirun line. Without -o the hostfile goes to stdout.")
    h.add_argument("table", metavar="RANK_TABLE")
    h.add_argument("--format", choices=list(FORMATS), default="openmpi",
                   help="openmpi: 'host slots=K' (default); mpich: 'host:K' (MPICH, Intel MPI)")
    h.add_argument("-o", "--output", dest="output", metavar="FILE", help="hostfile to write")

    s = sub.add_parser("show", help="list servers, devices and ranks")
    s.add_argument("table", metavar="RANK_TABLE")

    lo = sub.add_parser("is-local", help="exit 0 when every server is this machine (for launch scripts)",
                        description="Exit 0 when every server of the table is this machine (used by "
                        "launch/run_rank_table.sh to launch without a hostfile), 1 otherwise.")
    lo.add_argument("table", metavar="RANK_TABLE")


def _parser() -> argparse.ArgumentParser:
    p = build_parser(  # one-line usage errors, --debug, like every subcommand
        RANK_TABLE, "python -m mpitrans rank-table",
        "Make, join and inspect HCCL rank tables (RANK_TABLE_FILE) and derive MPI hostfiles from them. Works "
        "without Ascend hardware.", _EPILOG)
    sub = p.add_subparsers(dest="cmd", metavar="{generate,merge,hostfile,show,is-local}")
    sub.required = True
    _add_generate(sub)
    _add_merge(sub)
    _add_inspectors(sub)
    return p


# --------------------------------------------------------------------------------------------- entry


def run(argv: Sequence[str]) -> int:
    """Parse `argv` (after `rank-table`) and run the subcommand; errors propagate (the caller reports
    them, once, as one line)."""
    args = _parser().parse_args(list(argv))
    return _COMMANDS[args.cmd](args)


def main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """`python -m mpitrans.cluster ...` (= `python -m mpitrans rank-table ...`); returns the exit status.
    A user error is one line `mpitrans: error: ...` (status 1, or 2 for a bad command line); `--debug`,
    anywhere on the line, adds its traceback."""
    flagged, args = take_flag(list(sys.argv[1:] if argv is None else argv), DEBUG_FLAG)
    return _run_local(args, debug or flagged, run, everywhere=True)
