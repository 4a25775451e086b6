"""One process: `mindspore.transform_checkpoints(src, dst, "checkpoint_", src_strategy, dst_strategy)`.

    python bench/ms_transform.py SRC_DIR DST_DIR SRC_STRATEGY|- DST_STRATEGY|-
"""

import sys


def main() -> int:
    src, dst, src_strategy, dst_strategy = sys.argv[1:5]
    import mindspore as ms

    ms.transform_checkpoints(src, dst, "checkpoint_", None if src_strategy == "-" else src_strategy,
                             None if dst_strategy == "-" else dst_strategy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
