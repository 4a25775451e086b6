"""Converting a checkpoint file between formats without resharding: MindSpore's `ckpt_to_safetensors` and
`safetensors_to_ckpt`, file for file, byte-identical to what they write, streamed in bounded pieces.

It is a transform with no strategies: every tensor is copied whole, so there is no plan to agree on and
each file converts independently (`mpitrans.api` spreads the files over the MPI processes).

What MindSpore does, and so what we do: a `.ckpt` is loaded in file order and saved as safetensors
(`save_file` lays the tensors out by dtype and name; the header carries `{"format": "ms"}`, or nothing
for a file without tensors); a `.safetensors` is loaded by name order (the order `load_checkpoint`
returns) and saved as a `.ckpt` in that order. `name_map` renames parameters on the way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from mpitrans.errors import MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import SourceReader
from mpitrans.storage.formats import format_of_path, open_source

PIECE_BYTES = 64 << 20  # bytes of one copy buffer: memory stays bounded whatever the tensor sizes


class Task(NamedTuple):
    """One file to convert."""

    src: str
    dst: str


def convert_file(src: str, dst: str, name_map: Mapping[str, str] | None = None) -> None:
    """Write `dst` (its format by suffix) with `src`'s tensors, renamed by `name_map`; atomically."""
    out_fmt = format_of_path(dst)
    reader = open_source(src)
    try:
        metas = reader.tensors()
        if format_of_path(src).name == "safetensors":
            metas = sorted(metas, key=lambda t: t.name)  # load_checkpoint(format="safetensors")'s order
        renamed = [TensorMeta((name_map or {}).get(t.name, t.name), t.dtype, t.shape) for t in metas]
        if out_fmt.name == "safetensors" and not renamed:
            from mpitrans.storage.safetensors import SafetensorsTarget

            writer = SafetensorsTarget(dst, [], metadata=None)  # MindSpore saves an empty dict bare
        else:
            writer = out_fmt.open_target(dst, renamed)
        try:
            for t in metas:
                _copy(reader, t, writer.write)
        except BaseException:
            writer.abort()
            raise
        writer.commit()
    finally:
        reader.close()


def _copy(reader: SourceReader, t: TensorMeta, write) -> None:  # noqa: ANN001 - a writer's write
    """One tensor in slabs of whole rows along its first axis, each at most PIECE_BYTES when a row fits."""
    if not t.shape:
        buf = bytearray(t.nbytes)
        reader.read_box(t.name, (), memoryview(buf))
        write(memoryview(buf))
        return
    rows = t.shape[0]
    row_bytes = t.nbytes // rows if rows else 0
    step = max(1, PIECE_BYTES // row_bytes) if row_bytes else rows or 1
    buf = bytearray(min(rows, step) * row_bytes)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        view = memoryview(buf)[:(stop - start) * row_bytes]
        reader.read_box(t.name, ((start, stop), *((0, d) for d in t.shape[1:])), view)
        write(view)


def conversion_tasks(file_path: str, save_path: str | None, src_suffix: str, dst_suffix: str,
                     file_name_regex: str | None = None) -> list[Task]:
    """MindSpore's file list: a single file, or every matching file in `file_path`'s `rank*` folders,
    each written under the same relative name in `save_path` (default: beside the source)."""
    func = f"{src_suffix[1:]}_to_{dst_suffix[1:]}"
    if save_path and os.path.splitext(save_path)[1]:
        raise MpitransError(f"{func}: save_path must be a directory, got {save_path!r}")
    if os.path.isfile(file_path):
        if not file_path.endswith(src_suffix):
            raise MpitransError(f"{func}: the input file must be a {src_suffix} file, got {file_path}")
        if file_name_regex is not None and not re.findall(file_name_regex, file_path):
            raise MpitransError(f"{func}: {file_path} does not match file_name_regex {file_name_regex!r}")
        name = os.path.basename(file_path).replace(src_suffix, dst_suffix)
        return [Task(file_path, os.path.join(save_path or os.path.dirname(file_path), name))]
    if not os.path.isdir(file_path):
        raise MpitransError(f"{func}: {file_path} is neither a file nor a directory")
    rank_dirs = sorted(d for d in os.listdir(file_path)
                       if d.startswith("rank") and os.path.isdir(os.path.join(file_path, d)))
    if not rank_dirs:
        raise MpitransError(f"{func}: no directories starting with 'rank' in {file_path}")
    tasks = []
    for d in rank_dirs:
        out_dir = os.path.join(save_path, d) if save_path is not None else os.path.join(file_path, d)
        for f in sorted(os.listdir(os.path.join(file_path, d))):
            if f.endswith(src_suffix) and (file_name_regex is None or re.search(file_name_regex, f)):
                dst = os.path.join(out_dir, f.replace(src_suffix, dst_suffix))
                tasks.append(Task(os.path.join(file_path, d, f), dst))
    return tasks


def run_tasks(tasks: Sequence[Task], mine: Sequence[int], name_map: Mapping[str, str] | None) -> str:
    """Convert the tasks at indices `mine`; the first error as one line ("" when all went well), so the
    caller can agree on it across processes."""
    for i in mine:
        task = tasks[i]
        try:
            os.makedirs(os.path.dirname(os.path.abspath(task.dst)), exist_ok=True)
            convert_file(task.src, task.dst, name_map)
        except MpitransError as exc:
            return str(exc)
        except OSError as exc:
            return f"converting {task.src} to {task.dst} failed: {exc.strerror or exc}"
    return ""
