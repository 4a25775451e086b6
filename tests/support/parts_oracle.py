"""MindSpore's per-stage `_part` files and its answer for reading them back. Run as a subprocess (it
imports mindspore):

    python -m tests.support.parts_oracle JOB.json   # {"src_dir", "stage_dir", "work", "mid", "dst"}

1. `work/parts`: `transform_checkpoints` once per stage strategy file in `stage_dir`, into the `mid`
   strategy: `rank_x/checkpoint_x_part{stage}.ckpt`, what a per-stage conversion leaves.
2. `work/merged`: each rank's parts loaded in part order into one dict (`load_segmented_checkpoints`'
   update semantics, made deterministic) and saved as one file; the name set is checked against
   `load_segmented_checkpoints` itself.
3. `work/expected`: `transform_checkpoints(work/merged, ..., mid, dst)`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.support.oracle import PREFIX, run_oracle_module


def build_parts(src_dir: Path, stage_dir: Path, work: Path, mid: str, dst: str | None) -> tuple[Path, Path]:
    """(the `_part` folder, MindSpore's transform of its merged form); see the module docstring."""
    work.mkdir(parents=True, exist_ok=True)
    run_oracle_module("tests.support.parts_oracle", work / "parts_job.json",
                      {"src_dir": str(src_dir), "stage_dir": str(stage_dir), "work": str(work), "mid": mid,
                       "dst": dst})
    return work / "parts", work / "expected"


def _part_number(path: Path) -> int:
    return int(re.search(r"_part(\d+)\.ckpt$", path.name).group(1))


def _main(job_file: str) -> None:
    import mindspore as ms

    job = json.loads(Path(job_file).read_text())
    work = Path(job["work"])
    for stage_file in sorted(Path(job["stage_dir"]).iterdir()):
        ms.transform_checkpoints(job["src_dir"], str(work / "parts"), PREFIX, str(stage_file), job["mid"])
    for rank_dir in sorted((work / "parts").iterdir()):
        merged: dict = {}
        for part in sorted(rank_dir.glob("*_part*.ckpt"), key=_part_number):
            merged.update(ms.load_checkpoint(str(part)))
        assert set(merged) == set(ms.load_segmented_checkpoints(str(rank_dir))), rank_dir
        out = work / "merged" / rank_dir.name / f"{PREFIX}{rank_dir.name.split('_')[1]}.ckpt"
        out.parent.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint([{"name": k, "data": v} for k, v in merged.items()], str(out))
    ms.transform_checkpoints(str(work / "merged"), str(work / "expected"), PREFIX, job["mid"], job["dst"])


if __name__ == "__main__":
    _main(sys.argv[1])
