"""The source files' metadata, indexed once per planner so planning a target never scans every file.

Planning asks three questions per parameter: which file MindSpore takes it from (the last loaded file of
a local rank holding it), which other files hold identical bytes (the same local rank in every pipeline
stage whose layout of it is the same), and its dtype and shape. Asked naively, each scans every source
file; at 1024 source ranks and 2,000 parameters that is most of a target's planning time. Here the files
are grouped by local rank once, and files that share one metadata list (files of one layout class list
the same names, dtypes and shapes) share one name index.

A de-duplicated source (`remove_redundancy`, see `dedup`) leaves names out of some files; each file of
such a pipeline stage is then *listed* as the stage's merged list, the file it would have been without
de-duplication: MindSpore's order and choice of file are decided on the listings, the bytes are read from
whichever replica holds them (`candidates` only offers files that hold the name).

Parameters are also sorted into *holder classes*: two parameters held by the same files with the same
per-stage layouts get the same candidates for the same shard, so the planner computes them once per
class and target.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from mpitrans.metadata import TensorMeta
from mpitrans.plan.dedup import incomplete_stages, merged_order
from mpitrans.storage.safetensors import file_order

T = TypeVar("T")


def per_list(metas: Mapping[int, Sequence[TensorMeta]], make: Callable[[Sequence[TensorMeta]], T]) -> dict[int, T]:
    """`make(list)` for every file, computed once per distinct list object: files of one layout class
    usually share one list (their metadata travels once), and keep sharing what is made of it."""
    done: dict[int, tuple[Sequence[TensorMeta], T]] = {}  # the original is kept so its id stays unique
    out = {}
    for g, ms in metas.items():
        if id(ms) not in done:
            done[id(ms)] = (ms, make(ms))
        out[g] = done[id(ms)][1]
    return out


def distinct_lists(metas: Mapping[int, Sequence[TensorMeta]]) -> list[Sequence[TensorMeta]]:
    """The distinct list objects among the files' metadata, in order of first appearance."""
    seen: dict[int, Sequence[TensorMeta]] = {}
    for ms in metas.values():
        seen.setdefault(id(ms), ms)
    return list(seen.values())


class SourceCatalog:
    """Which files hold which parameter, by global rank and by local rank (rank within a stage)."""

    def __init__(self, metas: Mapping[int, Sequence[TensorMeta]], stage_devices: int,
                 stage_layout: Mapping[tuple[int, str], tuple]) -> None:
        self.stage_devices = stage_devices
        self.stage_layout = stage_layout
        self.metas: dict[int, list[TensorMeta]] = per_list(metas, list)
        self.by_name: dict[int, dict[str, TensorMeta]] = per_list(self.metas, lambda m: {t.name: t for t in m})
        self.ranks = sorted(self.metas)
        self.listing: dict[int, list[str]] = per_list(self.metas, lambda m: [t.name for t in m])
        self._merge_incomplete_stages()
        self.held: dict[int, set[str]] = per_list(self.listing, set)
        self.of_local: dict[int, list[int]] = defaultdict(list)  # local rank -> global ranks, ascending
        for g in self.ranks:
            self.of_local[g % stage_devices].append(g)
        self._classes = self._holder_classes()

    def _merge_incomplete_stages(self) -> None:
        """List every file of a de-duplicated stage as the merge of the stage's files (see `dedup`)."""
        sd = self.stage_devices
        stages = incomplete_stages(self.metas, sd)
        if not stages:
            return
        lists = distinct_lists(self.metas)
        if all(list(ms) == file_order(ms) for ms in lists):
            # Every file is in safetensors layout order (dtype, then name): so is the whole.
            metas = {t.name: t for ms in lists for t in ms}
            rank = {t.name: i for i, t in enumerate(file_order(list(metas.values())))}
        else:
            rank = {}
            for _, name in self.stage_layout:
                rank.setdefault(name, len(rank))
        unranked = len(rank)
        for stage in stages:
            files = {g: ms for g, ms in self.metas.items() if g // sd == stage}
            merged = merged_order([[t.name for t in ms] for ms in distinct_lists(files)],
                                  lambda n: rank.get(n, unranked))
            for g in files:
                self.listing[g] = merged

    def meta(self, name: str, g: int) -> TensorMeta:
        """`name`'s shard as file `g` holds it or, when `g` is de-duplicated without it, as a file of its
        stage holds it (every shard of a parameter in one stage has one shape and dtype)."""
        found = self.by_name[g].get(name)
        if found is not None:
            return found
        sd = self.stage_devices
        return next(self.by_name[h][name] for h in self.ranks if h // sd == g // sd and name in self.by_name[h])

    def _holder_classes(self) -> dict[str, int]:
        """name -> an id shared by the names held by the same files with the same per-stage layouts."""
        index: dict[int, int] = {}  # id of a name index -> its position among the distinct ones
        holders: dict[str, list[int]] = defaultdict(list)
        for g in self.ranks:
            d = self.by_name[g]
            if id(d) not in index:
                index[id(d)] = len(index)
                for name in d:
                    holders[name].append(index[id(d)])
        per_stage: dict[str, list] = defaultdict(list)
        for (stage, name), layout in self.stage_layout.items():
            per_stage[name].append((stage, layout))
        ids: dict[tuple, int] = {}
        return {name: ids.setdefault((tuple(h), tuple(sorted(per_stage.get(name, ()), key=_stage_key))),
                                     len(ids))
                for name, h in holders.items()}

    def holder_class(self, name: str) -> int:
        return self._classes.get(name, -1)

    def first_holder(self, name: str) -> int | None:
        """The lowest global rank whose file holds `name`."""
        return next((g for g in self.ranks if name in self.by_name[g]), None)

    def candidates(self, name: str, local: int, preferred: int | None) -> tuple[int, ...]:
        """Global source ranks whose file holds `name` as local rank `local`, MindSpore's choice first.

        A parameter shared by pipeline stages may be laid out differently in each; only stages whose
        layout equals the preferred file's stage layout hold the same bytes."""
        sd = self.stage_devices
        out = [preferred] if preferred is not None and name in self.by_name[preferred] else []
        want = self.stage_layout.get((preferred // sd, name)) if preferred is not None else None
        for g in self.of_local.get(local, ()):
            if g == preferred or name not in self.by_name[g]:
                continue
            if want is not None and self.stage_layout.get((g // sd, name)) != want:
                continue
            out.append(g)
        return tuple(out)


def _stage_key(item: tuple[int, tuple]) -> int:
    return item[0]


class LoadOrder:
    """The files MindSpore loads for one target, in loading order: the last loaded file of a local rank
    that holds a name is the one that name is taken from."""

    def __init__(self, catalog: SourceCatalog, order: Sequence[int]) -> None:
        self.catalog = catalog
        self.of_local: dict[int, list[int]] = defaultdict(list)  # latest loaded last
        for g in order:
            if g in catalog.metas:
                self.of_local[g % catalog.stage_devices].append(g)

    def chosen(self, name: str, local: int) -> int | None:
        """The global rank MindSpore takes (`name`, local rank `local`) from, or None if no loaded file has it."""
        held = self.catalog.held
        for g in reversed(self.of_local.get(local, ())):
            if name in held[g]:
                return g
        return None

    def first_seen(self, order: Sequence[int]) -> dict[str, int]:
        """name -> the first file in `order` listing it, in order of first appearance (MindSpore's
        parameter order). A list shared with an earlier file adds no name, so it is not walked again."""
        out: dict[str, int] = {}
        walked: set[int] = set()
        for g in order:
            names = self.catalog.listing.get(g)
            if names is None or id(names) in walked:
                continue
            walked.add(id(names))
            for name in names:
                if name not in out:
                    out[name] = g
        return out
