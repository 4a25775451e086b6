"""Run a command and record what `/usr/bin/time -v` would: wall time, peak RSS, CPU time, plus I/O counters.

    python bench/measure.py RECORD_DIR -- COMMAND [ARGS...]

Used as the process mpirun starts (one per MPI rank) or around a single process. The child's resources
come from `wait4` (its `ru_maxrss`: resident pages, file mappings included, at their peak), its syscall
I/O counters from `/proc/PID/io`, read after it exits but before it is reaped. The record is written to
`RECORD_DIR/proc-<rank>.json` (rank from Open MPI's environment, else 0); the exit status is passed on.
Deliberately imports nothing heavy: it adds ~20 ms and a few MiB that are not counted.
"""

import json
import os
import signal
import subprocess
import sys
import time


def _io(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}
    except OSError:
        return {}


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, cmd = sys.argv[1], sys.argv[3:]
    rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or "0"
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    while True:
        try:
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
            break
        except InterruptedError:
            continue
    io = _io(child.pid)
    _, status, ru = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    record = {
        "rank": int(rank),
        "wall_s": time.perf_counter() - t0,
        "maxrss_kib": ru.ru_maxrss,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "rchar": io.get("rchar"),
        "wchar": io.get("wchar"),
        "read_bytes": io.get("read_bytes"),
        "write_bytes": io.get("write_bytes"),
        "exit": code,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"proc-{rank}.json"), "w", encoding="ascii") as f:
        json.dump(record, f)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
