"""The job manifest: what a finished transform wrote, so a rerun can keep it and a reader can trust it.

`DIR/mpitrans_manifest.json` records the tool version, the command line, digests of the strategies and
of the source inventory (the job's identity), and for every output file its size and CRC-32C. It is
written last and atomically, so its presence means every listed file was complete when it was written.
`--resume` keeps a target only if the manifest describes the same job and the file on disk still has the
recorded size and checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping

from mpitrans import __version__
from mpitrans.storage.ckpt import file_crc32c

MANIFEST_NAME = "mpitrans_manifest.json"
# One small file per finished target while a job runs, so a killed job can still be resumed; removed
# once the manifest is written.
PROGRESS_DIR = ".mpitrans_progress"


def digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def job_identity(src_strategy: bytes | None, dst_strategy: bytes | None, prefix: str,
                 sources: Mapping[int, tuple[str, int]]) -> dict:
    """What must be equal for an earlier run's outputs to be reusable."""
    inventory = json.dumps({str(k): list(v) for k, v in sorted(sources.items())}).encode()
    return {
        "src_strategy_sha256": digest(src_strategy),
        "dst_strategy_sha256": digest(dst_strategy),
        "prefix": prefix,
        "sources_sha256": digest(inventory),
    }


def build(identity: dict, files: Mapping[int, Mapping]) -> dict:
    return {
        "tool": "mpitrans",
        "version": __version__,
        "command_line": sys.argv,
        "job": identity,
        "files": {str(k): dict(v) for k, v in sorted(files.items())},
    }


def write(dst_dir: str, manifest: dict) -> str:
    """Atomic: temp file, fsync, rename; several ranks on one shared disk may race harmlessly."""
    os.makedirs(dst_dir, exist_ok=True)
    path = os.path.join(dst_dir, MANIFEST_NAME)
    tmp = os.path.join(dst_dir, f".{MANIFEST_NAME}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


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


def reusable(dst_dir: str, manifest: dict | None, identity: dict, target: int, relpath: str) -> dict | None:
    """The manifest entry of `target` if its file can be kept as is."""
    if manifest is None or manifest.get("job") != identity:
        return None
    entry = manifest["files"].get(str(target))
    if not entry or entry.get("path") != relpath or check_file(dst_dir, entry) is not None:
        return None
    return entry


def _atomic_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def record_progress(dst_dir: str, identity: dict, target: int, entry: Mapping) -> None:
    folder = os.path.join(dst_dir, PROGRESS_DIR)
    os.makedirs(folder, exist_ok=True)
    _atomic_json(os.path.join(folder, f"target_{target}.json"), {"job": identity, "file": dict(entry)})


def reusable_progress(dst_dir: str, identity: dict, target: int, relpath: str) -> dict | None:
    """Like `reusable`, from the per-target record a killed run left behind."""
    path = os.path.join(dst_dir, PROGRESS_DIR, f"target_{target}.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("job") != identity:
        return None
    entry = data.get("file") or {}
    if entry.get("path") != relpath or check_file(dst_dir, entry) is not None:
        return None
    return entry


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
