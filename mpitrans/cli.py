"""Command line: `python -m mpitrans [subcommand] ...`, normally under mpirun.

With no subcommand the job is the transform. Errors found before any byte moves are agreed on by every
rank and reported once by rank 0; anything that goes wrong while bytes move aborts the whole MPI job at
once, because a rank that simply exits would leave its peers waiting forever.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

EXAMPLE = """\
examples:
  # 8-rank training checkpoint -> 4 ranks, 4 processes (one per target rank)
  mpirun -n 4 python -m mpitrans --src-checkpoint out/checkpoint --src-strategy out/strategy/ \\
      --dst-checkpoint resharded --dst-strategy dst_strategy.ckpt

  # merge all ranks into one full checkpoint, in this process only
  python -m mpitrans --src-checkpoint out/checkpoint --src-strategy src_strategy.ckpt --dst-checkpoint full

subcommands:
  merge-strategy   merge per-stage strategy files into one (like mindspore.merge_pipeline_strategys)
  rank-list        print the source ranks a target rank needs (like mindspore.rank_list_for_transform)
  rank-table       generate / merge / show HCCL rank tables and derive MPI hostfiles from them
  verify           check finished targets against their sources (and the manifest), byte for byte
"""


def _transform_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mpitrans",
        description="Reshard MindSpore distributed checkpoints to a new parallel layout, across all the "
        "processes of one MPI job. Each process reads only the byte ranges it needs from the files it can "
        "see, receives the rest from peers, and writes its target ranks on its own disk.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--src-checkpoint", "--src_checkpoint", "--src_ckpt_dir", "--src-ckpt-dir", dest="src_checkpoint",
                   required=True, metavar="PATH",
                   help="source model_dir holding rank_x/*.ckpt (the last .ckpt in name order is used per "
                   "rank), or one full .ckpt file")
    p.add_argument("--src-strategy", "--src_strategy", "--src_ckpt_strategy", "--src-ckpt-strategy",
                   "--src_strategy_path_or_dir", dest="src_strategy", metavar="PATH",
                   help="source strategy file (protobuf or .json), or a directory of per-stage files "
                   "(ckpt_strategy_rank_x.ckpt) merged in memory; omit when the source is one full checkpoint")
    p.add_argument("--dst-checkpoint", "--dst_checkpoint", "--dst_checkpoint_dir", "--dst-checkpoint-dir",
                   "--dst_ckpt_dir", "--dst-ckpt-dir", dest="dst_checkpoint", required=True, metavar="DIR",
                   help="output directory; target rank x is written to DIR/rank_x/{prefix}x.ckpt")
    p.add_argument("--dst-strategy", "--dst_strategy", "--dst_ckpt_strategy", "--dst-ckpt-strategy",
                   dest="dst_strategy", metavar="PATH",
                   help="destination strategy file or per-stage directory; omit for one full checkpoint")
    p.add_argument("--prefix", default="checkpoint_",
                   help="output file name prefix (default: checkpoint_, giving checkpoint_x.ckpt)")
    p.add_argument("--rank-table", "--rank_table", "--rank_table_file", dest="rank_table", metavar="FILE",
                   help="HCCL rank table of the destination cluster: target rank x is written by a process "
                   "running on the server that holds rank x (MPITRANS_SERVER_ID overrides a host's identity)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace target files that already exist (default: refuse, before moving any byte)")
    p.add_argument("--resume", action="store_true",
                   help="keep targets that an earlier run of the same job completed (checked against "
                   "DIR/mpitrans_manifest.json: size and CRC-32C) and redo the rest")
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of these options with MindFormers key names (src_checkpoint, "
                   "src_strategy_path_or_dir, dst_checkpoint, dst_strategy, prefix, ...); command-line flags "
                   "win; ./mpitrans.yaml is read when present and no flags are given")
    p.add_argument("--max-buffer", "--max_buffer", dest="max_buffer", default=_default_max_buffer(), metavar="SIZE",
                   help=f"bytes of chunk buffers each process may hold (e.g. 64M, 1G; default {_default_max_buffer()}, "
                   "which already keeps the disks busy in our benchmark; more only raises memory)")
    p.add_argument("--json-summary", "--json_summary", dest="json_summary", metavar="FILE",
                   help="also write the run summary as JSON to FILE (rank 0)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--log-level", "--log_level", dest="log_level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level of rank 0 (others: WARNING)")
    return p


def _default_max_buffer() -> str:
    """The engine's default as a size string; both subcommands that move bytes share it."""
    from mpitrans.engine import DEFAULT_MAX_BUFFER

    return f"{DEFAULT_MAX_BUFFER >> 20}M"


def parse_size(text: str) -> int:
    """'256M', '1G', '65536' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


def _setup_logging(rank: int, level: str, quiet: bool) -> None:
    lvl = logging.ERROR if quiet else (getattr(logging, level) if rank == 0 else logging.WARNING)
    logging.basicConfig(level=lvl, format=f"[mpitrans r{rank}] %(message)s", stream=sys.stderr)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def format_summary(summary) -> str:
    lines = [f"mpitrans: wrote {len(summary.targets)} target rank(s) under {summary.dst_checkpoint} "
             f"in {summary.wall_seconds:.2f} s "
             f"({summary.bytes_written / max(summary.wall_seconds, 1e-9) / 1e9:.2f} GB/s written)"]
    lines.append(f"  {'rank':>4} {'host':<16} {'targets':<12} {'read':>10} {'sent':>10} {'received':>10} "
                 f"{'written':>10}")
    for r in summary.ranks:
        tgts = ",".join(map(str, r.targets)) or "-"
        lines.append(f"  {r.rank:>4} {r.host[:16]:<16} {tgts[:12]:<12} {_human(r.bytes_read):>10} "
                     f"{_human(r.bytes_sent):>10} {_human(r.bytes_received):>10} {_human(r.bytes_written):>10}")
    return "\n".join(lines)


def _world_rank() -> int:
    return int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or 0)


def _run_transform(argv: Sequence[str]) -> int:
    from mpitrans.config import apply_config
    from mpitrans.errors import MpitransError

    try:
        argv = apply_config(list(argv))  # before parsing: the required flags may come from the file
    except MpitransError as exc:
        if _world_rank() == 0:
            print(f"mpitrans: error: {exc}", file=sys.stderr)
        return 2
    args = _transform_parser().parse_args(argv)
    from mpitrans.engine import JobError, transform
    from mpitrans.transport import make_transport

    t = make_transport(None)
    _setup_logging(t.rank, args.log_level, args.quiet)
    try:
        summary = transform(args.src_checkpoint, args.dst_checkpoint, args.src_strategy, args.dst_strategy,
                            prefix=args.prefix, comm=t, max_buffer=parse_size(args.max_buffer),
                            rank_table=args.rank_table, overwrite=args.overwrite,
                            resume=args.resume, strict=True, show_progress=not args.quiet)
    except JobError as exc:  # every rank holds the same message: report once, exit cleanly
        if t.rank == 0:
            print(f"mpitrans: error: {exc}", file=sys.stderr)
        return 1
    except MpitransError as exc:
        print(f"mpitrans: error on rank {t.rank}: {exc}", file=sys.stderr)
        t.abort(1)
        return 1
    except BaseException as exc:  # a bug or an I/O failure mid-transfer: take the whole job down
        import traceback

        traceback.print_exc()
        print(f"mpitrans: rank {t.rank} failed: {exc!r}; aborting the job", file=sys.stderr)
        t.abort(1)
        return 1
    if t.rank == 0:
        if not args.quiet:
            print(format_summary(summary))
        if args.json_summary:
            with open(args.json_summary, "w", encoding="utf-8") as f:
                json.dump(summary.to_json(), f, indent=2)
    return 0


def _run_merge(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mpitrans merge-strategy",
                                description="Merge per-stage strategy files into one file MindSpore can read.")
    p.add_argument("src", help="directory of per-stage strategy files (or one file)")
    p.add_argument("dst", help="merged strategy file to write (.json for JSON)")
    args = p.parse_args(argv)
    from mpitrans.errors import MpitransError
    from mpitrans.strategy.merge import merge_pipeline_strategys

    try:
        merge_pipeline_strategys(args.src, args.dst)
    except MpitransError as exc:
        print(f"mpitrans: error: {exc}", file=sys.stderr)
        return 1
    print(f"mpitrans: merged strategy written to {args.dst}")
    return 0


def _run_rank_list(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mpitrans rank-list",
                                description="Print the source ranks MindSpore needs to build a target rank.")
    p.add_argument("rank", type=int)
    p.add_argument("--src-strategy", "--src_strategy", dest="src_strategy")
    p.add_argument("--dst-strategy", "--dst_strategy", dest="dst_strategy")
    args = p.parse_args(argv)
    from mpitrans.api import rank_list_for_transform
    from mpitrans.errors import MpitransError

    try:
        print(" ".join(map(str, rank_list_for_transform(args.rank, args.src_strategy, args.dst_strategy))))
    except MpitransError as exc:
        print(f"mpitrans: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_verify(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mpitrans verify",
        description="Check every target file against the source region it should hold, byte for byte, and "
        "against DIR/mpitrans_manifest.json when present. Run it with the same options as the transform, "
        "under mpirun too (each target is checked on a host that sees it). Exits 1 on any mismatch.")
    for flags, kw in (
        (("--src-checkpoint", "--src_checkpoint", "--src_ckpt_dir"), {"required": True}),
        (("--src-strategy", "--src_strategy", "--src_ckpt_strategy", "--src_strategy_path_or_dir"), {}),
        (("--dst-checkpoint", "--dst_checkpoint", "--dst_checkpoint_dir", "--dst_ckpt_dir"), {"required": True}),
        (("--dst-strategy", "--dst_strategy", "--dst_ckpt_strategy"), {}),
    ):
        p.add_argument(*flags, dest=flags[0][2:].replace("-", "_"), **kw)
    p.add_argument("--prefix", default="checkpoint_")
    p.add_argument("--max-buffer", "--max_buffer", dest="max_buffer", default=_default_max_buffer())
    p.add_argument("--json-summary", "--json_summary", dest="json_summary", metavar="FILE")
    args = p.parse_args(argv)
    from dataclasses import asdict

    from mpitrans.engine import JobError
    from mpitrans.errors import MpitransError
    from mpitrans.transport import make_transport
    from mpitrans.verify import format_results, verify

    t = make_transport(None)
    try:
        results = verify(args.src_checkpoint, args.dst_checkpoint, args.src_strategy, args.dst_strategy,
                         prefix=args.prefix, comm=t, max_buffer=parse_size(args.max_buffer))
    except JobError as exc:
        if t.rank == 0:
            print(f"mpitrans: error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 - peers may be waiting: end the whole job
        if not isinstance(exc, MpitransError):
            import traceback

            traceback.print_exc()
        print(f"mpitrans: rank {t.rank} failed: {exc}; aborting the job", file=sys.stderr)
        t.abort(1)
        return 1
    if t.rank == 0:
        print(format_results(results))
        if args.json_summary:
            with open(args.json_summary, "w", encoding="utf-8") as f:
                json.dump([asdict(r) for r in results], f, indent=2)
    return 0 if all(r.ok for r in results) else 1


def _run_rank_table(argv: Sequence[str]) -> int:
    from mpitrans.rank_table import main as rank_table_main

    return rank_table_main(list(argv))


SUBCOMMANDS = {"merge-strategy": _run_merge, "rank-list": _run_rank_list, "rank-table": _run_rank_table,
               "verify": _run_verify}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    if argv and argv[0] == "transform":
        argv = argv[1:]
    code = _run_transform(argv)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
