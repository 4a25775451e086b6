"""MindSpore's answer for a filtered conversion: the same sources with the filtered parameters removed
(`mindspore.load_checkpoint(..., choice_func=...)` + `save_checkpoint`, file by file), then
`mindspore.transform_checkpoints` on them. Run as a subprocess (it imports mindspore):

    python -m tests.support.filter_oracle JOB.json   # {"src_dir", "work", "drop": [names], "src", "dst"}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.oracle import PREFIX, run_oracle_module


def expected_filtered(src_dir: Path, work: Path, drop: set[str], src: str | None, dst: str | None) -> Path:
    """Build MindSpore's output for `src_dir` without the parameters `drop`; returns its directory."""
    work.mkdir(parents=True, exist_ok=True)
    run_oracle_module("tests.support.filter_oracle", work / "filter_job.json",
                      {"src_dir": str(src_dir), "work": str(work), "drop": sorted(drop), "src": src, "dst": dst})
    return work / "expected"


def _main(job_file: str) -> None:
    import mindspore as ms

    job = json.loads(Path(job_file).read_text())
    drop, work = set(job["drop"]), Path(job["work"])
    for path in sorted(Path(job["src_dir"]).glob("rank_*/*.ckpt")):
        kept = ms.load_checkpoint(str(path), choice_func=lambda name: name not in drop)
        out = work / "filtered" / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint([{"name": k, "data": v} for k, v in kept.items()], str(out))
    ms.transform_checkpoints(str(work / "filtered"), str(work / "expected"), PREFIX, job["src"], job["dst"])


if __name__ == "__main__":
    _main(sys.argv[1])
