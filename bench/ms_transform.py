"""One process: `mindspore.transform_checkpoints(src, dst, "checkpoint_", src_strategy, dst_strategy)`.

    python bench/ms_transform.py SRC_DIR DST_DIR SRC_STRATEGY|- DST_STRATEGY|- [OUTPUT_FORMAT]

OUTPUT_FORMAT (`ckpt` or `safetensors`) is passed as `output_format=` when given (safetensors sources).
"""

import sys


def main() -> int:
    src, dst, src_strategy, dst_strategy = sys.argv[1:5]
    fmt = {"output_format": sys.argv[5]} if len(sys.argv) > 5 else {}
    import mindspore as ms

    ms.transform_checkpoints(src, dst, "checkpoint_", None if src_strategy == "-" else src_strategy,
                             None if dst_strategy == "-" else dst_strategy, **fmt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
