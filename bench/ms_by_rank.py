"""MindSpore's per-rank recipe, one process per target rank (run under `mpirun -n P`).

    mpirun -n P python bench/ms_by_rank.py SRC_DIR DST_DIR SRC_STRATEGY|- DST_STRATEGY|- TARGETS

MPI rank i converts target ranks i, i+P, ... as MindSpore's documentation shows: for each target,
`rank_list_for_transform` names the source ranks it needs, their files (the last `.ckpt` in each
`rank_x/`, MindSpore's rule) go into `checkpoint_files_map`, and `transform_checkpoint_by_rank` writes
`DST_DIR/rank_t/checkpoint_t.ckpt`. No MPI calls: mpirun only starts the processes.
"""

import glob
import os
import sys


def main() -> int:
    src, dst, src_strategy, dst_strategy, targets = sys.argv[1:6]
    src_strategy = None if src_strategy == "-" else src_strategy
    dst_strategy = None if dst_strategy == "-" else dst_strategy
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    import mindspore as ms

    for t in range(rank, int(targets), size):
        files = {}
        for r in ms.rank_list_for_transform(t, src_strategy, dst_strategy):
            found = sorted(glob.glob(os.path.join(src, f"rank_{r}", "*.ckpt")))
            if not found:
                raise SystemExit(f"ms_by_rank: no checkpoint for source rank {r} under {src}")
            files[r] = found[-1]
        out = os.path.join(dst, f"rank_{t}", f"checkpoint_{t}.ckpt")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        ms.transform_checkpoint_by_rank(t, files, out, src_strategy, dst_strategy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
