"""Finding source checkpoint files on the disk this process can see.

Layout on disk follows MindSpore: `model_dir/rank_<id>/*.ckpt`, one file per rank; when a rank directory
holds several checkpoints the lexicographically last one is used (MindSpore's rule, and usually the
latest step). A single `.ckpt` file stands for an unsplit model: source rank 0.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("mpitrans")

_RANK_DIR = re.compile(r"^rank_(\d+)$")


def discover_sources(path: str) -> dict[int, str]:
    """Map each source rank visible here to its checkpoint file; empty when nothing is visible."""
    if os.path.isfile(path):
        return {0: os.path.abspath(path)}
    if not os.path.isdir(path):
        return {}
    found: dict[int, str] = {}
    for entry in sorted(os.listdir(path)):
        m = _RANK_DIR.match(entry)
        rank_dir = os.path.join(path, entry)
        if not m or not os.path.isdir(rank_dir):
            continue
        files = sorted(f for f in os.listdir(rank_dir) if f.endswith(".ckpt")
                       and os.path.isfile(os.path.join(rank_dir, f)))
        if not files:
            continue
        if len(files) > 1:
            log.info("%s holds %d checkpoints; using the last in name order: %s", rank_dir, len(files), files[-1])
        found[int(m.group(1))] = os.path.abspath(os.path.join(rank_dir, files[-1]))
    return found


def rank_dirs_without_checkpoint(path: str) -> list[str]:
    """`rank_x` directories that exist here but hold no .ckpt: worth naming in an error."""
    if not os.path.isdir(path):
        return []
    out = []
    for entry in sorted(os.listdir(path)):
        rank_dir = os.path.join(path, entry)
        if _RANK_DIR.match(entry) and os.path.isdir(rank_dir):
            if not any(f.endswith(".ckpt") for f in os.listdir(rank_dir)):
                out.append(rank_dir)
    return out
