"""The job manifest: what a finished transform wrote, so a rerun can keep it and a reader can trust it.

`DIR/mpitrans_manifest.json` records the tool version, the command line, the job's identity (digests of
the strategies, the options that shape the output), a fingerprint of every source file used (name, size,
mtime_ns, CRC-32C of its first and last 64 KiB, where a .ckpt keeps its first and last record headers),
and for every output file its size, CRC-32C and the source ranks it was built from. It is written last
and atomically, so its presence means every listed file was complete when it was written. `--resume`
keeps a target only if the job is the same, none of its sources changed since, and the file on disk still
has the recorded size and checksum; otherwise it says why and redoes the target.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import NamedTuple

from mpitrans import __version__
from mpitrans.storage.base import write_atomically
from mpitrans.storage.checksum import crc32c, file_crc32c
from mpitrans.storage.parts import part_files

MANIFEST_NAME = "mpitrans_manifest.json"
# One small file per finished target while a job runs, so a killed job can still be resumed; removed
# once the manifest is written.
PROGRESS_DIR = ".mpitrans_progress"


def digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


FINGERPRINT_BYTES = 64 << 10


def job_identity(src_strategy: bytes | None, dst_strategy: bytes | None, prefix: str) -> dict:
    """What must be equal, beyond the sources, for an earlier run's outputs to be reusable."""
    return {
        "src_strategy_sha256": digest(src_strategy),
        "dst_strategy_sha256": digest(dst_strategy),
        "prefix": prefix,
    }


def fingerprint(path: str) -> dict:
    """Cheap evidence that a source file is unchanged: a rewrite in place changes mtime_ns, and content
    changes near either end (a .ckpt's first and last record headers) change the CRC even when copied
    with its old mtime. A rank's `_part` directory is the list of its files' fingerprints."""
    if os.path.isdir(path):
        return {"name": os.path.basename(path) + "/", "parts": [fingerprint(p) for p in part_files(path)]}
    st = os.stat(path)
    value = 0
    with open(path, "rb", buffering=0) as f:
        value = crc32c(f.read(FINGERPRINT_BYTES), value)
        if st.st_size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, st.st_size - FINGERPRINT_BYTES))
            value = crc32c(f.read(FINGERPRINT_BYTES), value)
    return {"name": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32c": value}


def source_change(old: Mapping | None, new: Mapping | None) -> str | None:
    """None when two fingerprints agree, else what differs, for the user."""
    if old == new:
        return None
    if not old or not new:
        return "it was not recorded" if not old else "it is no longer visible"
    for key, what in (("name", "file name"), ("size", "size"), ("mtime_ns", "modification time"),
                      ("crc32c", "content")):
        if old.get(key) != new.get(key):
            return f"its {what} changed"
    return "it changed"


def build(identity: dict, sources: Mapping[int, Mapping], files: Mapping[int, Mapping]) -> dict:
    return {
        "tool": "mpitrans",
        "version": __version__,
        "command_line": sys.argv,
        "job": identity,
        "sources": {str(k): dict(v) for k, v in sorted(sources.items())},
        "files": {str(k): dict(v) for k, v in sorted(files.items())},
    }


def write(dst_dir: str, manifest: dict) -> str:
    """Atomic; several ranks on one shared disk may race harmlessly."""
    os.makedirs(dst_dir, exist_ok=True)
    path = os.path.join(dst_dir, MANIFEST_NAME)
    _atomic_json(path, manifest, indent=1)
    return path


def remove_stale_temps(dst_dir: str) -> None:
    """Temporary manifest and progress files a killed run left (they never become final names)."""
    for folder, name in ((dst_dir, MANIFEST_NAME), (os.path.join(dst_dir, PROGRESS_DIR), "target_")):
        pattern = os.path.join(glob.escape(folder), f"{glob.escape(name)}*.tmp-*")
        for stale in glob.glob(pattern) + glob.glob(os.path.join(glob.escape(folder), ".*.tmp-*")):
            with contextlib.suppress(OSError):
                os.unlink(stale)


def read(dst_dir: str) -> dict | None:
    path = os.path.join(dst_dir, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def check_file(dst_dir: str, entry: Mapping) -> str | None:
    """None when the file matches its manifest entry, else why not."""
    path = os.path.join(dst_dir, entry.get("path", ""))
    if not os.path.isfile(path):
        return f"{path} is missing"
    size, crc = file_crc32c(path)
    if size != entry.get("size"):
        return f"{path} has {size} bytes, the manifest says {entry.get('size')}"
    if crc != entry.get("crc32c"):
        return f"{path} has CRC-32C {crc:#010x}, the manifest says {entry.get('crc32c', 0):#010x}"
    return None


class Reuse(NamedTuple):
    """Whether an earlier run's output of one target can be kept; `why` explains a refusal."""

    entry: dict | None
    why: str | None


def reusable(dst_dir: str, record: Mapping | None, identity: dict, sources: Mapping[int, Mapping],
             target: int, relpath: str) -> Reuse:
    """Decide on `target` from a record: the manifest, or a killed run's progress record (same shape:
    `job`, `sources`, `files`). `sources` are this run's fingerprints."""
    if record is None:
        return Reuse(None, None)
    entry = (record.get("files") or {}).get(str(target))
    if not isinstance(entry, dict):
        return Reuse(None, None)
    if record.get("job") != identity:
        return Reuse(None, "the strategies or the prefix differ from the earlier run's")
    if entry.get("path") != relpath:
        return Reuse(None, f"the earlier run wrote it as {entry.get('path')}")
    old = record.get("sources") or {}
    for g in entry.get("sources", []):
        change = source_change(old.get(str(g)), sources.get(int(g)))
        if change:
            return Reuse(None, f"source rank_{g} ({(sources.get(int(g)) or {}).get('name', '?')}): {change}")
    if "sources" not in entry:
        return Reuse(None, "the earlier run did not record its sources")
    problem = check_file(dst_dir, entry)
    if problem:
        return Reuse(None, problem)
    return Reuse(dict(entry), None)


def _atomic_json(path: str, data: Mapping, indent: int | None = None) -> None:
    write_atomically(path, json.dumps(data, indent=indent, sort_keys=True).encode())


def record_progress(dst_dir: str, identity: dict, sources: Mapping[int, Mapping], target: int,
                    entry: Mapping) -> None:
    """After a target is published: what `--resume` needs if this run dies before its manifest."""
    folder = os.path.join(dst_dir, PROGRESS_DIR)
    os.makedirs(folder, exist_ok=True)
    used = {int(g): sources[int(g)] for g in entry.get("sources", []) if int(g) in sources}
    record = {"job": identity, "sources": {str(g): v for g, v in used.items()}, "files": {str(target): dict(entry)}}
    _atomic_json(os.path.join(folder, f"target_{target}.json"), record)


def read_progress(dst_dir: str, target: int) -> dict | None:
    path = os.path.join(dst_dir, PROGRESS_DIR, f"target_{target}.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clear_progress(dst_dir: str, targets: list[int]) -> None:
    folder = os.path.join(dst_dir, PROGRESS_DIR)
    for target in targets:
        try:
            os.unlink(os.path.join(folder, f"target_{target}.json"))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(folder)
    except OSError:
        pass
