"""The unified safetensors store: one full (unsharded) model spread over several safetensors files.

This is the folder `mindspore.parallel.unified_safetensors` produces from a distributed checkpoint, and
what `load_distributed_checkpoint(network=None, unified_safetensors_dir=...)` reads back::

    part0.safetensors ... partN-1.safetensors   full tensors of the strategy's parameters
    hyper_param.safetensors                     the rest of rank 0's file, as it is (global_step, ...)
    param_name_map.json                         {"metadata": {"total_size": B}, "weight_map": {name: file}}

The rules that decide the layout are MindSpore's, so the same input gives the same names: one file per
started 3 GiB of full tensors (at most one per parameter), parameters dealt largest first to the file
holding the fewest bytes so far (ties: the earlier file), the map listing files in order and each file's
parameters in the order they were dealt. Only `accu_grads.*` among the strategy's parameters is left to
`hyper_param.safetensors`. mpitrans may be asked for more files than MindSpore's rule gives (`files=`):
that spreads the writing over more processes, with the same dealing rule.

Reading: `UnifiedSource` opens the map (or a folder holding one) as one full source, each tensor read by
byte range from the file the map names; a file the map names but the folder lacks is one error naming
both, before anything is written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from mpitrans.errors import CheckpointFormatError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import Box
from mpitrans.storage.formats import UNIFIED_MAP_NAME
from mpitrans.storage.safetensors import SafetensorsSource, file_order

MAP_NAME = UNIFIED_MAP_NAME
HYPER_NAME = "hyper_param.safetensors"
MINDSPORE_FILE_BYTES = 3 << 30  # unified_safetensors starts a new file per 3 GiB of full tensors
UNIFIED_ONLY_PREFIX = "accu_grads"  # strategy parameters MindSpore leaves out of the part files


def part_name(index: int) -> str:
    """MindSpore's name of part file `index`."""
    return f"part{index}.safetensors"


def file_count(sizes: Sequence[int], files: int | None = None) -> int:
    """How many part files: `files` if given, else MindSpore's one per started 3 GiB; never more than
    one per parameter, never fewer than one."""
    wanted = files if files else math.ceil(sum(sizes) / MINDSPORE_FILE_BYTES)
    return max(1, min(wanted, len(sizes)))


def deal(sizes: Sequence[tuple[str, int]], count: int) -> list[list[str]]:
    """MindSpore's dealing: largest first (a stable sort keeps the given order among equals), each to
    the file with the fewest bytes so far, the first such file on a tie."""
    groups: list[list[str]] = [[] for _ in range(count)]
    totals = [0] * count
    for name, size in sorted(sizes, key=lambda item: -item[1]):
        i = totals.index(min(totals))
        groups[i].append(name)
        totals[i] += size
    return groups


def map_document(groups: Sequence[Sequence[str]], total_size: int, names: Sequence[str] | None = None) -> bytes:
    """`param_name_map.json` as MindSpore writes it (4-space indent); `names` renames the files (HDF5)."""
    weight_map = {p: (names[i] if names else part_name(i)) for i, group in enumerate(groups) for p in group}
    return json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=4).encode()


def read_map(path: str) -> dict[str, str]:
    """The weight map of a `param_name_map.json` (MindSpore also accepts a bare {name: file} map)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: cannot read the unified store's map ({exc})") from None
    if isinstance(doc, dict) and "weight_map" in doc:
        doc = doc["weight_map"]
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise CheckpointFormatError(f"{path}: the weight map must map parameter names to file names")
    for name, file in doc.items():
        if os.path.basename(file) != file or file in ("", ".", ".."):
            raise CheckpointFormatError(f"{path}: parameter {name!r} maps to {file!r}, not a file of this folder")
    return doc


class UnifiedSource:
    """A `SourceReader` over a unified store: the union of its files' tensors, in safetensors order
    (descending dtype, then name), each read from the file the map names for it."""

    def __init__(self, path: str, index: bytes | None = None) -> None:
        self.path = path
        folder = os.path.dirname(path)
        if index is None:
            weight_map = read_map(path)
            files = sorted(set(weight_map.values()))
            if os.path.isfile(os.path.join(folder, HYPER_NAME)):
                files.append(HYPER_NAME)
            self._parts = {f: SafetensorsSource(self._part_path(f, weight_map), None) for f in files}
        else:
            try:
                blobs = json.loads(index)
                self._parts = {f: SafetensorsSource(os.path.join(folder, f), blob.encode())
                               for f, blob in blobs.items()}
            except (ValueError, TypeError, AttributeError) as exc:
                raise CheckpointFormatError(f"{path}: damaged index received from a peer ({exc})") from None
        self._where: dict[str, SafetensorsSource] = {}
        for part in self._parts.values():
            for t in part.tensors():
                if t.name in self._where:
                    raise CheckpointFormatError(f"{path}: parameter {t.name!r} is in both {self._where[t.name].path} "
                                                f"and {part.path}")
                self._where[t.name] = part
        self._tensors = file_order([t for p in self._parts.values() for t in p.tensors()])

    def _part_path(self, file: str, weight_map: dict[str, str]) -> str:
        part = os.path.join(os.path.dirname(self.path), file)
        if not os.path.isfile(part):
            name = next((n for n, f in weight_map.items() if f == file), "")
            raise CheckpointFormatError(f"{self.path}: parameter {name!r} is mapped to {file}, which is missing "
                                        f"from {os.path.dirname(self.path) or '.'}")
        return part

    def tensors(self) -> list[TensorMeta]:
        return list(self._tensors)

    def read_box(self, name: str, box: Box, out: memoryview) -> None:
        part = self._where.get(name)
        if part is None:
            raise CheckpointFormatError(f"{self.path}: parameter {name!r} is not in this unified store")
        part.read_box(name, box, out)

    def export_index(self) -> bytes:
        return json.dumps({f: p.export_index().decode() for f, p in self._parts.items()}).encode()

    def close(self) -> None:
        for part in self._parts.values():
            part.close()

