"""Pipeline-stage strategy files merged the way MindSpore merges them.

With pipeline parallelism every rank saves a strategy file describing only its own stage. MindSpore's
`merge_pipeline_strategys` folds one file per stage into a single strategy in which each parameter name
carries its stage as a ``"{stage}-"`` prefix; every later step (layout maps, stage counts, the choice of
layout for a parameter shared by two stages) reads those prefixes. We rebuild the same merged content in
memory, in the same order, so a directory of stage files can be used directly without writing a merged
file into the user's directory, and `merge_pipeline_strategys` can still write one on request.

Order matters and MindSpore does not sort: it takes ``glob.glob("*.ckpt")`` (or ``"*.json"``) as the
directory lists it. The first file seen for a stage wins, later ones are skipped, and the file order also
decides which stage's layout a shared parameter gets for ranks beyond the first stage. We list the
directory the same way so that on the same file system both tools see the same order.
"""

from __future__ import annotations

import glob
import marshal
import os
from collections.abc import Callable, Iterable

from mpitrans.errors import StrategyError
from mpitrans.strategy.bounds import check_bounds
from mpitrans.strategy.codec import (
    is_json_path,
    parse_strategy_bytes,
    read_strategy,
    read_strategy_bytes,
    write_strategy,
)
from mpitrans.strategy.model import StrategyFile

__all__ = ["MERGED_FILE_NAME", "list_stage_files", "load_strategy", "merge_pipeline_strategys",
           "merge_stage_files"]

# MindFormers writes its merged strategy into the stage directory under this name and deletes it before
# merging again. A stale copy is not a stage file (its names are already prefixed), so it is skipped.
MERGED_FILE_NAME = "merged_ckpt_strategy.ckpt"


def list_stage_files(directory: str, ignore: Iterable[str] = ()) -> list[str]:
    """The stage files of a directory, in MindSpore's (directory listing) order.

    ``*.ckpt`` files if there are any, else ``*.json`` files; mixing both is refused as MindSpore refuses
    it. A stale merged file and the paths in `ignore` are left out.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise StrategyError(f"strategy directory {directory} is not a directory")
    skip = {os.path.abspath(p) for p in ignore}
    pattern = glob.escape(directory)

    def files(ext: str) -> list[str]:
        found = glob.glob(os.path.join(pattern, "*" + ext))
        return [p for p in found if os.path.isfile(p) and os.path.basename(p) != MERGED_FILE_NAME
                and os.path.abspath(p) not in skip]

    pb, js = files(".ckpt"), files(".json")
    if pb and js:
        raise StrategyError(f"strategy directory {directory} mixes .ckpt and .json strategy files; MindSpore "
                            f"merges only one format at a time")
    found = pb or js
    if not found:
        raise StrategyError(f"strategy directory {directory} holds no *.ckpt or *.json strategy files")
    return found


def merge_stage_files(paths: Iterable[str], source: str | None = None,
                      read: Callable[[str], bytes] = read_strategy_bytes) -> StrategyFile:
    """Merge per-stage strategy files in the given order, exactly as MindSpore's merge does.

    Protobuf files byte-identical to an earlier one are skipped unread; a file whose stage (the stage of its
    first strategy item) was already merged is skipped; each layout name becomes ``"{stage}-{name}"``;
    the result has current_stage 1. For JSON files the strategy items are a JSON object in MindSpore, so
    a node name seen again keeps its first position and takes the later value; protobuf keeps every item.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise StrategyError("no strategy files to merge")
    kinds = {is_json_path(p) for p in paths}
    if len(kinds) > 1:
        raise StrategyError("cannot merge a mixture of .json and protobuf strategy files")
    as_json = kinds.pop()
    merged = StrategyFile(current_stage=1, source=source or os.pathsep.join(paths))
    json_items: dict[str, tuple[str, int, tuple[tuple[int, ...], ...]]] = {}
    seen_bytes: set[bytes] = set()
    merged_stages: list[int] = []
    for path in paths:
        data = read(path)
        if not as_json:
            if data in seen_bytes:
                continue
            seen_bytes.add(data)
        part = parse_strategy_bytes(data, path, as_json)
        if not part.strategy_items:
            raise StrategyError(f"strategy file {path} has no parallel_strategy_item, so its pipeline stage "
                                f"is unknown and it cannot be merged")
        stage = part.strategy_items[0][1]
        if stage in merged_stages:
            continue
        merged.layouts.extend((f"{stage}-{name}", layout) for name, layout in part.layouts)
        if as_json:
            for item in part.strategy_items:
                json_items[item[0]] = item
        else:
            merged.strategy_items.extend(part.strategy_items)
        merged_stages.append(stage)
    if as_json:
        merged.strategy_items = list(json_items.values())
    return merged


def load_strategy(path_or_dir: str | os.PathLike[str]) -> StrategyFile:
    """A strategy from one file, or from a directory of per-stage files merged in memory.

    Nothing is written to or deleted from the directory: a stale ``merged_ckpt_strategy.ckpt`` next to
    the stage files is ignored rather than removed as MindFormers would. A strategy whose numbers cannot
    describe a real job (see `bounds`) is refused here, before anything is sized from it.
    """
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        strategy = merge_stage_files(list_stage_files(path), source=path)
    else:
        strategy = read_strategy(path)
    check_bounds(strategy)
    return strategy


_FILE, _STAGES = b"F", b"S"


def load_payload(path_or_dir: str | os.PathLike[str]) -> bytes:
    """What one process sends the others for `path_or_dir` (`load_from_payload` turns it into what
    `load_strategy` returns): the file's own bytes, or a directory's stage files with their names, which
    every process then parses (and merges) at the same time."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        files = [(p, read_strategy_bytes(p)) for p in list_stage_files(path)]
        return _STAGES + marshal.dumps((path, files))
    name = path.encode("utf-8", "surrogateescape")
    return _FILE + len(name).to_bytes(4, "little") + name + read_strategy_bytes(path)


def load_from_payload(data: bytes) -> StrategyFile:
    """The strategy a `load_payload` stands for, checked as `load_strategy` checks it."""
    if data[:1] == _STAGES:
        try:
            source, files = marshal.loads(data[1:])
        except (ValueError, EOFError, TypeError):
            raise StrategyError("strategy payload is damaged") from None
        contents = dict(files)
        strategy = merge_stage_files([p for p, _ in files], source=source, read=contents.__getitem__)
    elif data[:1] == _FILE and len(data) >= 5:
        n = int.from_bytes(data[1:5], "little")
        path = data[5:5 + n].decode("utf-8", "surrogateescape")
        strategy = parse_strategy_bytes(data[5 + n:], path, is_json_path(path))
    else:
        raise StrategyError("strategy payload does not come from load_payload")
    check_bounds(strategy)
    return strategy


def merge_pipeline_strategys(src_strategy_dirs: str, dst_strategy_file: str) -> None:
    """MindSpore's `merge_pipeline_strategys`: merge a directory of stage files into one file.

    Unlike MindSpore, the output format follows the destination's name (JSON for ``.json``, protobuf
    otherwise), so MindSpore can always read the result back; MindSpore writes the sources' format
    whatever the name. The destination itself and a stale merged file in the directory are not inputs.
    """
    src = os.fspath(src_strategy_dirs)
    dst = os.path.abspath(os.path.normpath(os.fspath(dst_strategy_file)))
    merged = merge_stage_files(list_stage_files(src, ignore=[dst]), source=src)
    parent = os.path.dirname(dst)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise StrategyError(f"cannot create directory {parent}: {exc.strerror or exc}") from None
    write_strategy(merged, dst)
