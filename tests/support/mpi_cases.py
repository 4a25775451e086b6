"""Run many transforms inside ONE mpirun job (startup is paid once), for the differential tests.

Usage (under mpirun): python tests/support/mpi_cases.py JOBS.json
JOBS.json is a list of {"src": ..., "src_strategy": ..., "dst": ..., "dst_strategy": ..., "prefix": ...}.
Any failure aborts the whole job with a message naming the case, so a test never hangs.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    from mpi4py import MPI

    from mpitrans.job.run import transform

    comm = MPI.COMM_WORLD
    jobs = json.loads(Path(sys.argv[1]).read_text())
    for i, job in enumerate(jobs):
        try:
            transform(job["src"], job["dst"], job.get("src_strategy"), job.get("dst_strategy"),
                      prefix=job.get("prefix", "checkpoint_"), comm=comm, max_buffer=job.get("max_buffer", 1 << 20),
                      strict=False, output_format=job.get("output_format", "ckpt"),
                      store_files=job.get("store_files"))
        except BaseException:  # noqa: BLE001 - report which case, then end every rank at once
            print(f"mpi_cases: case {i} ({job.get('label', '')}) failed on rank {comm.rank}:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
    if comm.rank == 0:
        print(f"mpi_cases: {len(jobs)} cases done on {comm.size} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
