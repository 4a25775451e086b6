"""Command line: `python -m mpitrans [subcommand] ...`, normally under mpirun.

With no subcommand the job is the transform. A user error (a bad flag or size, a bad configuration file,
an output directory that cannot be written, a bad source or strategy) is one line `mpitrans: error: ...`
without a traceback (`--debug` shows it): every rank takes part in finding it, rank 0 prints it once, and
no rank exits before rank 0 has printed, because mpirun kills the rest of a job as soon as one process
exits with an error. Anything that goes wrong while bytes move aborts the whole MPI job at once, because
a rank that simply exits would leave its peers waiting forever.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict

from mpitrans.cli.options import (
    MERGE,
    RANK_LIST,
    SIZE_FORMS,
    TRANSFORM,
    VERIFY,
    ArgumentParser,
    build_parser,
    compatibility_notes,
    option,
    options_from_args,
    parse_size,
)
from mpitrans.errors import MpitransError
from mpitrans.job.options import JobOptions
from mpitrans.job.summary import Summary
from mpitrans.storage.formats import FORMATS

__all__ = ["SIZE_FORMS", "ArgumentParser", "check_output_dir", "main", "parse_size", "take_flag"]

EXAMPLE = """\
examples:
  # 8-rank training checkpoint -> 4 ranks, 4 processes (one per target rank)
  mpirun -n 4 python -m mpitrans --src-checkpoint out/checkpoint --src-strategy out/strategy/ \\
      --dst-checkpoint resharded --dst-strategy dst_strategy.ckpt

  # the same job's plan, per process, without writing anything (--json for scripts)
  mpirun -n 4 python -m mpitrans --config transform.yaml --dry-run

  # merge all ranks into one full checkpoint, in this process only
  python -m mpitrans --src-checkpoint out/checkpoint --src-strategy src_strategy.ckpt --dst-checkpoint full

subcommands:
  merge-strategy   merge per-stage strategy files into one (like mindspore.merge_pipeline_strategys)
  rank-list        print the source ranks a target rank needs (like mindspore.rank_list_for_transform)
  rank-table       generate / merge / show HCCL rank tables and derive MPI hostfiles from them
  verify           check finished targets against their sources (and the manifest), byte for byte
"""


DEBUG_FLAG = option("debug").flags[0]


def take_flag(argv: Sequence[str], flag: str) -> tuple[bool, list[str]]:
    """(whether `flag` is in argv before any `--`, argv without it). `--debug` is taken out before any
    parsing so that it works anywhere on the line and even when the rest of the line is what is wrong."""
    out: list[str] = []
    found = False
    for i, tok in enumerate(argv):
        if tok == "--":
            out += argv[i:]
            break
        if tok == flag:
            found = True
        else:
            out.append(tok)
    return found, out


def _transform_parser() -> argparse.ArgumentParser:
    """Every flag of the transform, from the option table (`mpitrans.cli.options`)."""
    return build_parser(
        TRANSFORM, "python -m mpitrans",
        "Reshard MindSpore distributed checkpoints to a new parallel layout, across all the processes of one "
        "MPI job. Each process reads only the byte ranges it needs from the files it can see, receives the "
        "rest from peers, and writes its target ranks on its own disk. Every option is listed with all its "
        "spellings (MindSpore's and MindFormers' too).", EXAMPLE)


# A target is written as `.{name}.tmp-{pid}` and renamed to `{name}` = `{prefix}{rank}{suffix}` (or
# `{prefix}{rank}_part{stage}{suffix}`, the suffix being the output format's). The target count is not
# known before the strategies are read, so the check allows 6 digits of rank, `_part` and 3 digits of
# stage, and 7 digits of pid.
_SUFFIX = max(len(f.suffix) for f in FORMATS.values())
_NAME_EXTRA = len(".") + 6 + len("_part") + 3 + _SUFFIX + len(".tmp-") + 7


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _name_max(path: str) -> int:
    try:
        return int(os.pathconf(path, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_output_dir(dst: str, prefix: str) -> None:
    """Refuse an output directory the transform could not write into, before any byte moves.

    Otherwise these surface only when the first target is opened: as a traceback, after other ranks have
    already started writing. Each rank checks the disk it will write to (without a shared disk each host
    has its own). Nothing is created here: a job refused for another reason leaves no empty directory.
    """
    if os.path.lexists(dst) and not os.path.isdir(dst):
        what = "a file" if os.path.isfile(dst) else "a dangling link" if os.path.islink(dst) else "not a directory"
        raise MpitransError(f"--dst-checkpoint {dst} is {what}; give a directory (it is created if absent)")
    base = _nearest_existing(dst)
    if not os.path.isdir(base):
        raise MpitransError(f"--dst-checkpoint {dst} cannot be created: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        why = "Read-only file system" if _read_only(base) else "Permission denied"
        where = "" if base == os.path.abspath(dst) else f" (its existing parent {base})"
        raise MpitransError(f"cannot write to the output directory {dst}{where}: {why}")
    limit = _name_max(base)
    if len(os.fsencode(prefix)) + _NAME_EXTRA > limit:
        raise MpitransError(
            f"--prefix is {len(os.fsencode(prefix))} bytes long: output file names ({prefix[:16]}...<rank>.ckpt, "
            f"written as .<name>.tmp-<pid>) would exceed the {limit}-byte limit of file names under {base}; "
            f"use a prefix of at most {limit - _NAME_EXTRA} bytes"
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, MpitransError):
        if exc.filename is not None:
            return f"{exc.strerror or exc}: {exc.filename}"
        return exc.strerror or str(exc)
    return str(exc)


def _exit_code(exc: BaseException) -> int:
    return int(getattr(exc, "exit_code", 1))


def _wait_for_peers(t, timeout: float = 60.0) -> None:
    """Return once every rank got here; abort the job if one does not within `timeout` seconds.

    Used after rank 0 printed an error that every rank knows about: no rank may exit before that (mpirun
    would kill rank 0 with its message unprinted), and none may wait for ever either."""
    if not t.wait_for_peers(timeout):
        print(f"mpitrans: rank {t.rank}: the other ranks did not stop within {timeout:.0f} s; aborting the job",
              file=sys.stderr, flush=True)
        t.abort(1)


def _report_once(t, message: str, trace: str = "") -> None:
    """Rank 0 prints `message` (after `trace` when --debug asked for it); every rank then waits for it."""
    if t.rank == 0:
        if trace:
            sys.stderr.write(trace)
        print(f"mpitrans: error: {message}", file=sys.stderr, flush=True)
    _wait_for_peers(t)


def _agreed(t, fn: Callable[[], object], debug: bool) -> tuple[object, int | None]:
    """Run `fn` (reading and checking the command line) on every rank and agree on the outcome.

    Returns (its value, None) when it succeeded on every rank, else (None, exit status) on every rank,
    after rank 0 printed the lowest rank's error once (or after --help was printed: status 0). A bug (any
    other exception) is shown with its traceback and ends the whole job, since peers wait for this rank.
    """
    value = None
    outcome = {"stop": False, "code": 0, "message": "", "trace": ""}
    try:
        value = fn()
    except SystemExit as exc:  # --help: argparse has printed it
        outcome = {"stop": True, "code": exc.code if isinstance(exc.code, int) else 0, "message": "", "trace": ""}
    except (MpitransError, OSError) as exc:
        outcome = {"stop": True, "code": _exit_code(exc), "message": _describe(exc),
                   "trace": traceback.format_exc() if debug else ""}
    except BaseException as exc:  # noqa: BLE001 - a bug: show it, and end the job (peers are waiting)
        traceback.print_exc()
        print(f"mpitrans: rank {t.rank} failed: {exc!r}; aborting the job", file=sys.stderr)
        t.abort(1)
        raise
    outcomes = [json.loads(b) for b in t.allgather_bytes(json.dumps(outcome).encode())]
    failed = [(r, o) for r, o in enumerate(outcomes) if o["message"]]
    if failed:
        r, first = failed[0]
        same = len(failed) == t.size and all(o["message"] == first["message"] for _, o in failed)
        _report_once(t, first["message"] if same else f"rank {r}: {first['message']}", first["trace"])
        return None, first["code"] or 1
    if any(o["stop"] for o in outcomes):
        return None, max(o["code"] for o in outcomes)
    return value, None


def _setup_logging(rank: int, level: str, quiet: bool) -> None:
    lvl = logging.ERROR if quiet else (getattr(logging, level) if rank == 0 else logging.WARNING)
    logging.basicConfig(level=lvl, format=f"[mpitrans r{rank}] %(message)s", stream=sys.stderr)


def _human(n: float) -> str:
    from mpitrans.job.summary import human_size

    return human_size(n)


def format_summary(summary: Summary) -> str:
    """Rank 0's table of a finished run: per process, what it read, sent, received and wrote, so that a
    placement that sends much more than it reads locally shows at a glance."""
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
    """This process's rank when a launcher started it (before, or without, MPI being initialised)."""
    for key in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _write_json_summary(path: str, data: object) -> int:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    except OSError as exc:
        print(f"mpitrans: error: cannot write the JSON summary: {_describe(exc)}", file=sys.stderr)
        return 1
    return 0


def _parse_job(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, JobOptions]:
    """(the command line, the job it describes): what the command line says, the rest `JobOptions`' defaults."""
    args = parser.parse_args(list(argv))
    return args, options_from_args(args)


def _transform_setup(argv: Sequence[str]) -> tuple[argparse.Namespace, JobOptions]:
    from mpitrans.cli.config import apply_config

    args, opts = _parse_job(_transform_parser(), apply_config(argv))  # the file may hold required flags
    check_output_dir(opts.dst_checkpoint, opts.prefix)  # a dry run checks it too, creating nothing
    return args, opts


def _run_transform(argv: Sequence[str], debug: bool = False) -> int:
    from mpitrans.job.transport import make_transport

    # The transport comes first, so that every rank takes part in judging the command line and the
    # configuration file, and rank 0 reports what is wrong once, with no rank exiting before it printed.
    t = make_transport(None)
    setup, code = _agreed(t, lambda: _transform_setup(argv), debug)
    if code is not None:
        return code
    args, opts = setup  # type: ignore[misc]
    _setup_logging(t.rank, args.log_level, args.quiet)
    for note in compatibility_notes(args) if t.rank == 0 and not args.quiet else ():
        print(f"mpitrans: note: {note}", file=sys.stderr)
    result, code = _transform_job(t, opts, debug)
    if code is not None:
        return code
    return _show_result(t, args, result)


def _transform_job(t, opts: JobOptions, debug: bool) -> tuple[object, int | None]:
    """(the run's `Summary`, or with --dry-run its `PlanReport`; None), or (None, exit status) after a
    failure, reported once when every rank holds it, and otherwise ending the whole job."""
    from mpitrans.job.agree import JobError
    from mpitrans.job.guard import Interrupted
    from mpitrans.job.run import run

    try:
        return run(opts, t), None  # with opts.dry_run: the plan, and nothing written
    except JobError as exc:  # every rank holds the same message: report once, exit cleanly
        _report_once(t, str(exc), traceback.format_exc() if debug else "")
        return None, 1
    except (MpitransError, KeyboardInterrupt) as exc:
        # Only this process failed (with peers, `transform` has already ended the whole job).
        if debug:
            traceback.print_exc()
        interrupted = isinstance(exc, KeyboardInterrupt | Interrupted)
        print(f"mpitrans: error: {exc or 'interrupted'}", file=sys.stderr)
        t.abort(130 if interrupted else 1)
        return None, 1
    except BaseException as exc:  # a bug or an I/O failure mid-transfer: take the whole job down
        traceback.print_exc()
        print(f"mpitrans: rank {t.rank} failed: {exc!r}; aborting the job", file=sys.stderr)
        t.abort(1)
        return None, 1


def _show_result(t, args: argparse.Namespace, result) -> int:
    """Rank 0 prints the run's summary or the dry run's plan (JSON with --json, nothing with --quiet),
    and writes it to --json-summary FILE."""
    from mpitrans.job.dryrun import PlanReport, format_report

    if t.rank != 0:
        return 0
    data = result.to_json()
    if args.json:
        print(json.dumps(data, indent=2))
    elif not args.quiet:
        print(format_report(result) if isinstance(result, PlanReport) else format_summary(result))
    return _write_json_summary(args.json_summary, data) if args.json_summary else 0


def _run_local(argv: Sequence[str], debug: bool, body: Callable[[list[str]], int], everywhere: bool = False) -> int:
    """A subcommand that works in one process: its user errors are one line (a traceback with --debug).

    Under mpirun only rank 0 runs it (unless `everywhere`), so its output, its files and its errors
    appear once; the other processes exit at once with status 0 and leave rank 0's status to mpirun."""
    if not everywhere and _world_rank() != 0:
        return 0
    try:
        return body(list(argv))
    except (MpitransError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"mpitrans: error: {_describe(exc)}", file=sys.stderr)
        return _exit_code(exc)


def _merge(argv: list[str]) -> int:
    p = build_parser(MERGE, "python -m mpitrans merge-strategy",
                     "Merge per-stage strategy files into one file MindSpore can read.")
    p.add_argument("src", help="directory of per-stage strategy files (or one file)")
    p.add_argument("dst", help="merged strategy file to write (.json for JSON)")
    args = p.parse_args(argv)
    from mpitrans.strategy.merge import merge_pipeline_strategys

    merge_pipeline_strategys(args.src, args.dst)
    print(f"mpitrans: merged strategy written to {args.dst}")
    return 0


def _run_merge(argv: Sequence[str], debug: bool = False) -> int:
    return _run_local(argv, debug, _merge)


def _rank_list(argv: list[str]) -> int:
    p = build_parser(RANK_LIST, "python -m mpitrans rank-list",
                     "Print the source ranks MindSpore needs to build a target rank.")
    p.add_argument("rank", type=int)
    args = p.parse_args(argv)
    from mpitrans.api import rank_list_for_transform

    print(" ".join(map(str, rank_list_for_transform(args.rank, args.src_strategy, args.dst_strategy))))
    return 0


def _run_rank_list(argv: Sequence[str], debug: bool = False) -> int:
    return _run_local(argv, debug, _rank_list)


def _verify_parser() -> argparse.ArgumentParser:
    return build_parser(
        VERIFY, "python -m mpitrans verify",
        "Check every target file against the source region it should hold, byte for byte, and against "
        "DIR/mpitrans_manifest.json when present. Run it with the same options as the transform, under mpirun "
        "too (each target is checked on a host that sees it). Exits 1 on any mismatch.")


def _run_verify(argv: Sequence[str], debug: bool = False) -> int:
    from mpitrans.job.transport import make_transport

    t = make_transport(None)  # first: every rank judges the command line, rank 0 reports (see _agreed)
    setup, code = _agreed(t, lambda: _parse_job(_verify_parser(), argv), debug)
    if code is not None:
        return code
    args, opts = setup  # type: ignore[misc]
    from mpitrans.job.agree import JobError
    from mpitrans.job.verify import format_results, verify_job

    try:
        results = verify_job(opts, t)
    except JobError as exc:
        _report_once(t, str(exc), traceback.format_exc() if debug else "")
        return 1
    except BaseException as exc:  # noqa: BLE001 - peers may be waiting: end the whole job
        if debug or not isinstance(exc, MpitransError | OSError):
            traceback.print_exc()
        print(f"mpitrans: error on rank {t.rank}: {_describe(exc)}; aborting the job", file=sys.stderr)
        t.abort(1)
        return 1
    if t.rank == 0:
        print(format_results(results))
        if args.json_summary and _write_json_summary(args.json_summary, [asdict(r) for r in results]):
            return 1
    return 0 if all(r.ok for r in results) else 1


def _run_rank_table(argv: Sequence[str], debug: bool = False) -> int:
    from mpitrans.cli.rank_table import run

    # `generate` describes the server it runs on: started on every server by mpirun, each writes its own.
    return _run_local(argv, debug, run, everywhere=argv[:1] == ["generate"])


SUBCOMMANDS = {"merge-strategy": _run_merge, "rank-list": _run_rank_list, "rank-table": _run_rank_table,
               "verify": _run_verify}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mpitrans [subcommand] ...`; returns the exit status (2: bad command line or config).

    A signal at any moment, even while MPI starts or ranks agree on the command line, ends the whole job
    with one line: the same guard the job itself runs under covers the command line around it."""
    from mpitrans.job.guard import Interrupted, JobGuard, report_once
    from mpitrans.job.transport import abort_process, launched_by_mpi

    debug, args = take_flag(list(sys.argv[1:] if argv is None else argv), DEBUG_FLAG)
    try:
        with JobGuard(abort_process, _world_rank(), watch_parent=launched_by_mpi(), grace=0.5):
            if args and args[0] in SUBCOMMANDS:
                code = SUBCOMMANDS[args[0]](args[1:], debug)
            else:
                code = _run_transform(args[1:] if args[:1] == ["transform"] else args, debug)
    except (Interrupted, KeyboardInterrupt) as exc:
        name = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
        report_once(f"mpitrans: rank {_world_rank()}: interrupted by {name}; nothing incomplete was published")
        abort_process(130)
        return 130
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
