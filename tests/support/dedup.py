"""De-duplicated sources made by MindSpore's own rule, from a case's full-redundancy shards.

MindSpore's `ModelCheckpoint(remove_redundancy=True)` saves, on each rank, `save_checkpoint(network, ...,
choice_func=keep, remove_redundancy=True)` where `keep(name)` is true for names outside the parallel layout
and for the names `remove_param_redundancy(get_parameter_redundancy(layout))` assigns to that rank
(`mindspore/train/callback/_checkpoint.py`). Saving from a compiled parallel network needs one process
per device; here each rank's shard (MindSpore's own split of the full checkpoint, `tests.support.oracle`)
is loaded and saved again by `mindspore.save_checkpoint` with that same `choice_func`, the assignment
computed by the same MindSpore functions from the strategy file the shards were cut by (per pipeline
stage: that stage's own file, with the stage's first rank as `initial_rank`, as the training callback
does from the stage's layout).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from tests.support.oracle import CaseFiles

__all__ = ["assignment", "write_dedup"]


def assignment(files: CaseFiles) -> dict[int, tuple[set[str], set[str]]]:
    """Source rank -> (names of its stage's layout, the names MindSpore's rule keeps on that rank)."""
    from mindspore.train._utils import get_parameter_redundancy, remove_param_redundancy

    layout = files.case.src
    sd = layout.stage_device_num
    if layout.num_stages == 1:
        stage_files = [files.src_strategy]
    else:
        ext = ".json" if files.case.fmt == "json" else ".ckpt"
        stage_files = [files.src_stage_dir / f"ckpt_strategy_rank_{s * sd}{ext}" for s in range(layout.num_stages)]
    out = {}
    for s, path in enumerate(stage_files):
        with _opt_sizes_resolved(layout.stage_layouts(s)):
            redundancy = get_parameter_redundancy(os.fspath(path), initial_rank=s * sd)
        kept = remove_param_redundancy(redundancy)
        for g in range(s * sd, (s + 1) * sd):
            out[g] = (set(redundancy), set(kept.get(g, ())))
    return out


@contextmanager
def _opt_sizes_resolved(layouts):
    """MindSpore's rule read from a strategy file takes `opt_weight_shard_size` -1 ("every replica") for
    the whole device count and then finds no group for the parameter, so no rank would save it; the
    training callback, reading the compiled network's layout, uses the real group size. Give the file
    reader that size (restated in `mpitrans.fixtures.layouts`)."""
    import mindspore.train._utils as utils

    parse = utils.parse_strategy_ckpt

    def resolved(path):
        out = parse(path)
        for name, value in out.items():
            if value[3] == -1 and name.rpartition("-")[2] in layouts:
                value[3] = layouts[name.rpartition("-")[2]].resolved_opt_size()
        return out

    utils.parse_strategy_ckpt = resolved
    try:
        yield
    finally:
        utils.parse_strategy_ckpt = parse


def write_dedup(files: CaseFiles, dest: Path, fmt: str = "ckpt") -> Path:
    """`dest/rank_x/` holding what each rank saves with `remove_redundancy=True` (`fmt`: ckpt or
    safetensors)."""
    import mindspore as ms

    for g, (laid_out, keep) in sorted(assignment(files).items()):
        src = next((files.src_dir / f"rank_{g}").glob("*.ckpt"))
        params = ms.load_checkpoint(os.fspath(src))
        out = dest / f"rank_{g}"
        out.mkdir(parents=True)
        ms.save_checkpoint(params, os.fspath(out / (src.stem + "." + fmt)), format=fmt, remove_redundancy=True,
                           choice_func=lambda name, lo=laid_out, k=keep: name not in lo or name in k)
    return dest
