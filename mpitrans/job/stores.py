"""Full-model stores: one full (unsharded) target written as several files, in parallel.

A store is planned as the ordinary full target (every process plans it, which is cheap), then rank 0
deals its tensors to part files (`storage.unified.deal`, MindSpore's rule) and broadcasts the decision;
each part becomes a target of its own, written by one process (part i by process i mod P). The rest of the job is the
usual one: every part is streamed, assembled from whichever processes read its bytes, and published
atomically. Last, the store's index is written: `param_name_map.json` for a unified safetensors store,
the master `model.h5` (virtual datasets over the parts) for an HDF5 store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mpitrans.errors import MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.plan.filters import ParamFilter
from mpitrans.plan.planner import OutTensor, Region, TargetPlan
from mpitrans.storage import hdf5, unified
from mpitrans.storage.base import write_atomically
from mpitrans.storage.formats import Format
from mpitrans.strategy.layout_map import layout_map
from mpitrans.strategy.model import StrategyFile


@dataclass
class Store:
    """Every part of the store (known on every process), and what the index file needs."""

    fmt: Format
    parts: list[TargetPlan]
    names: dict[int, str]  # part -> file name inside the output directory
    groups: list[list[str]] = field(default_factory=list)  # parameters of each part file, dealt order
    total_size: int = 0
    order: list[str] = field(default_factory=list)  # the full target's tensor order

    @property
    def index_name(self) -> str:
        """The file that makes the folder a store (written last)."""
        return unified.MAP_NAME if self.fmt.name == "unified-safetensors" else hdf5.MASTER_NAME

    def placement(self, nprocs: int) -> dict[int, int]:
        """Part i on process i mod P: the parts' bytes spread over every process."""
        return {p.rank: p.rank % nprocs for p in self.parts}

    def layout_digest(self) -> str:
        """Which tensors each file holds: what a resumed run must agree on to keep a part."""
        doc = [[self.names[p.rank], [[x.name, x.dtype, list(x.shape)] for x in p.tensors]] for p in self.parts]
        return f"{self.fmt.name}:" + hashlib.sha256(json.dumps(doc).encode()).hexdigest()

    def index_bytes(self) -> bytes:
        """`param_name_map.json` of a unified store."""
        return unified.map_document(self.groups, self.total_size)

    def to_bytes(self) -> bytes:
        """The dealing, for the other processes (`from_bytes`): one process decides, so every process
        writes and names the same parts whatever metadata it happens to hold."""
        parts = [[p.rank, p.stem, [[x.name, x.dtype, list(x.shape)] if self.names[p.rank] == unified.HYPER_NAME
                                   else [x.name] for x in p.tensors]] for p in self.parts]
        doc = {"parts": parts, "names": {str(k): v for k, v in self.names.items()}, "groups": self.groups,
               "total": self.total_size, "order": self.order}
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, blob: bytes, fmt: Format, full: TargetPlan) -> Store:
        """The store `to_bytes` described, its part tensors taken from this process's full plan."""
        doc = json.loads(blob)
        planned = {x.name: x for x in full.tensors}
        parts = [TargetPlan(rank, stem, [planned[e[0]] if len(e) == 1 else _copy_of_rank0(e[0], e[1], tuple(e[2]))
                                         for e in entries]) for rank, stem, entries in doc["parts"]]
        return cls(fmt, parts, {int(k): v for k, v in doc["names"].items()}, doc["groups"], doc["total"], doc["order"])

    def write_index(self, dst: str, attrs: dict[str, str]) -> None:
        """The store's index, published atomically after every part."""
        path = os.path.join(dst, self.index_name)
        if self.fmt.name == "unified-safetensors":
            write_atomically(path, self.index_bytes())
            return
        parts = {self.names[p.rank]: [TensorMeta(x.name, x.dtype, x.shape) for x in p.tensors] for p in self.parts}
        hdf5.write_master(path, parts, self.order, attrs)


def check_full_target(fmt: Format, targets: list[int], dst_strategy: str | None) -> None:
    """A store holds one full model: refuse a destination strategy."""
    if dst_strategy is not None or targets != [0]:
        raise MpitransError(f"--output-format {fmt.name} writes one full model; omit --dst-strategy "
                            f"(got {dst_strategy})")


def _sizes(tensors: list[OutTensor]) -> list[tuple[str, int]]:
    return [(x.name, TensorMeta(x.name, x.dtype, x.shape).nbytes) for x in tensors]


def _in_parts(full: TargetPlan, src: StrategyFile | None, fmt: Format,
              choice: Callable[[str], bool] | None) -> list[OutTensor]:
    """The tensors the part files hold: for a unified store MindSpore's choice (the strategy's
    parameters but `accu_grads.*`, and those `choice` accepts); for HDF5 every tensor of the full target."""
    if fmt.name != "unified-safetensors":
        return list(full.tensors)
    in_strategy = set(layout_map(src)) if src is not None else {x.name for x in full.tensors}
    kept = [x for x in full.tensors if x.name in in_strategy and not x.name.startswith(unified.UNIFIED_ONLY_PREFIX)]
    return kept if choice is None else [x for x in kept if _chosen(choice, x.name)]


def _chosen(choice: Callable[[str], bool], name: str) -> bool:
    answer = choice(name)
    if not isinstance(answer, bool):
        raise MpitransError(f"choice_func({name!r}) returned {answer!r}: mpitrans takes True or False (renaming "
                            f"parameters is not supported)")
    return answer


def _hyper(rank0: list[TensorMeta] | None, dealt: set[str], keep: ParamFilter) -> list[OutTensor]:
    """MindSpore's `hyper_param.safetensors`: every other tensor of rank 0's file, copied as it is."""
    if rank0 is None:
        raise MpitransError("a unified store copies the tensors outside the strategy from rank_0, which no "
                            "process of this job sees")
    return [_copy_of_rank0(m.name, m.dtype, m.shape) for m in rank0 if m.name not in dealt and keep.keeps(m.name)]


def _copy_of_rank0(name: str, dtype: str, shape: tuple[int, ...]) -> OutTensor:
    """A tensor copied whole, as it is, from source rank 0's file."""
    box = tuple((0, d) for d in shape)
    return OutTensor(name, dtype, shape, (Region(box, box, (0,)),))


def _first_seen(metas: Mapping[int, Sequence[TensorMeta]]) -> dict[str, int]:
    """Names in the order MindSpore meets them: source files by rank, each in its own order (a stable
    sort by size keeps this order among equal sizes, as MindSpore's does)."""
    first: dict[str, int] = {}
    for g in sorted(metas):
        for m in metas[g]:
            first.setdefault(m.name, len(first))
    return first


@dataclass(frozen=True)
class StoreRequest:
    """What the user asked of a store: part files, parameter filter, and MindSpore's choice_func."""

    files: int | None
    keep: ParamFilter
    choice: Callable[[str], bool] | None = None


def split_store(fmt: Format, full: TargetPlan, src: StrategyFile | None, metas: Mapping[int, Sequence[TensorMeta]],
                nprocs: int, ask: StoreRequest) -> Store:
    """Deal the full target's tensors to part files (run by rank 0, which holds every file's metadata;
    `Store.to_bytes` hands the decision to the others); `metas`: the source files' tensors by rank (the
    order among equal sizes, and a unified store's hyper_param)."""
    files, keep = ask.files, ask.keep
    tensors = _in_parts(full, src, fmt, ask.choice)
    rank0 = list(metas[0]) if 0 in metas else None
    if fmt.name == "unified-safetensors":
        first = _first_seen(metas)
        tensors.sort(key=lambda x: first.get(x.name, len(first)))
    sizes = _sizes(tensors)
    count = unified.file_count([s for _, s in sizes], files if files or fmt.name == "unified-safetensors"
                               else nprocs)
    groups = unified.deal(sizes, count)
    part_of = {name: i for i, group in enumerate(groups) for name in group}
    name_of = unified.part_name if fmt.name == "unified-safetensors" else hdf5.part_name
    parts = [TargetPlan(i, name_of(i).rsplit(".", 1)[0], [x for x in full.tensors if part_of.get(x.name) == i])
             for i in range(count)]
    names = {i: name_of(i) for i in range(count)}
    if fmt.name == "unified-safetensors":
        hyper = _hyper(rank0, set(part_of), keep)
        if hyper:
            parts.append(TargetPlan(count, unified.HYPER_NAME.rsplit(".", 1)[0], hyper))
            names[count] = unified.HYPER_NAME
    return Store(fmt, parts, names, groups, sum(s for _, s in sizes), [x.name for x in full.tensors])


def digests(src_bytes: bytes | None, fingerprints: dict[int, dict]) -> dict[str, str]:
    """File attributes of an HDF5 master: what the store was made from."""
    return {"mpitrans_src_strategy_sha256": hashlib.sha256(src_bytes).hexdigest() if src_bytes else "",
            "mpitrans_sources_sha256": hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest(),
            "mpitrans_sources": json.dumps(fingerprints, sort_keys=True)}
