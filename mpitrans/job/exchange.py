"""Who reads what, and what each reader must supply, agreed through two compact request exchanges.

No process sees every plan. Instead, as torch.distributed.checkpoint's local plan -> global plan ->
final plan round does:

0. a writer that can name every writer wanting a region (the processes of the targets holding the same
   box, `OutTensor.holders`) and whose first deciding writer sees a candidate decides it alone, exactly
   as the owner would (`plan.assign.Alone`): most regions never travel;
1. every writer sends each other region its targets need to that region's *owner* (a process chosen by a
   hash of the region's identity: tensor, source box, candidate files);
2. each owner decides, for all writers wanting that region together and in target order, who reads it
   (`plan.assign`: own host first, read once per shared disk, else the least-loaded process that sees a
   candidate), and answers each writer;
3. every writer cuts its targets into chunks (`plan.schedule`) and tells each reader which pieces to read
   for it in which round, each region once per round however many of its targets hold it.

Each process's share is proportional to what it writes plus the regions it owns. Requests are plain
tuples of ints and strings, encoded with `marshal` (they never hold tensor data, and only peers of the same
job read them).
"""

from __future__ import annotations

import json
import marshal
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from mpitrans.job.transport import Transport
from mpitrans.plan.assign import Alone, ReaderTable, assign_region, new_chooser, region_key
from mpitrans.plan.planner import TargetPlan
from mpitrans.plan.schedule import Chunk, Piece


class Ask(NamedTuple):
    """One piece a reader supplies: `nbytes` bytes of `src_box` of `tensor` in source rank `src_rank`'s file."""

    src_rank: int
    tensor: str
    src_box: tuple
    nbytes: int


def _owner(key: tuple, nprocs: int) -> int:
    return zlib.crc32(repr(key).encode()) % nprocs if nprocs > 1 else 0


def decide_readers(t: Transport, plans: Mapping[int, TargetPlan], seers: Mapping[int, Sequence[int]],
                   file_ids: Mapping[int, Mapping[int, tuple]], where: Mapping[int, int] | None = None) -> ReaderTable:
    """Collective: the reader of every region of this process's `plans`. `where` (target -> process, for
    every target of the job) lets a writer decide alone the regions whose wanting writers it can name."""
    wants: list[list] = [[] for _ in range(t.size)]
    table: ReaderTable = {}
    alone = Alone(seers, file_ids)
    writers_of = _Writers(where or {})
    for tr in sorted(plans):
        for ki, tensor in enumerate(plans[tr].tensors):
            writers, pos = writers_of(tensor.holders, tr)
            for ri, region in enumerate(tensor.regions):
                if writers:
                    choices = alone.choices(region.candidates, writers)
                    if choices is not None:
                        table[(tr, ki, ri)] = choices[pos]
                        continue
                key = region_key(tensor.name, region)
                wants[_owner(key, t.size)].append((tensor.name, region.src_box, region.candidates, region.dst_box,
                                                   tr, ki, ri))
    inbox = t.alltoall_bytes([marshal.dumps(w) for w in wants])
    groups: dict[tuple, list] = defaultdict(list)
    for writer, blob in enumerate(inbox):
        for name, src_box, cands, dst_box, tr, ki, ri in marshal.loads(blob):
            groups[(name, src_box, cands)].append((tr, ki, ri, writer, dst_box))
    chooser = new_chooser(seers, file_ids)
    answers: list[list] = [[] for _ in range(t.size)]
    for key in sorted(groups, key=repr):
        who = sorted(groups[key])
        choices = assign_region(chooser, key, who[0][4], [w for _, _, _, w, _ in who])
        for (tr, ki, ri, w, _), (reader, g) in zip(who, choices, strict=True):
            answers[w].append([tr, ki, ri, reader, g])
    for blob in t.alltoall_bytes([marshal.dumps(a) for a in answers]):
        for tr, ki, ri, reader, g in marshal.loads(blob):
            table[(tr, ki, ri)] = (reader, g)
    return table


class _Writers:
    """The processes writing a tensor box's holders, in target order, and a target's place among them."""

    def __init__(self, where: Mapping[int, int]) -> None:
        self.where = where
        # (id of a holders tuple, target) -> (that tuple, kept alive so its id stays its own, writers, place)
        self._seen: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...], int]] = {}

    def __call__(self, holders: tuple[int, ...], target: int) -> tuple[tuple[int, ...], int]:
        key = (id(holders), target)  # plans share one holders tuple per template: no hashing of long tuples
        found = self._seen.get(key)
        if found is None:
            held = [h for h in holders if h in self.where]
            if target in held:
                found = (holders, tuple(self.where[h] for h in held), held.index(target))
            else:  # the planner did not name this target's peers: let the owner decide
                found = (holders, (), 0)
            self._seen[key] = found
        return found[1], found[2]


def remote_pieces(chunk: Chunk, me: int) -> dict[int, list[tuple[Ask, list[Piece]]]]:
    """The pieces of `chunk` other processes read, by reader, each distinct region once (in order of first
    appearance) with every piece it fills: a region several of a writer's targets hold (a replicated
    tensor) is asked for, sent and received once. Writer and reader both derive the order from this."""
    out: dict[int, dict[tuple, tuple[Ask, list[Piece]]]] = {}
    for p in chunk.pieces:
        if p.reader == me:
            continue
        by_key = out.get(p.reader)
        if by_key is None:
            by_key = out[p.reader] = {}
        key = (p.src_rank, p.tensor, p.src_box)
        found = by_key.get(key)
        if found is None:
            by_key[key] = (Ask(p.src_rank, p.tensor, p.src_box, p.nbytes), [p])
        else:
            found[1].append(p)
    return {r: list(by_key.values()) for r, by_key in sorted(out.items())}


Remote = dict[int, list[tuple[Ask, list[Piece]]]]  # `remote_pieces` of one chunk


def exchange_asks(t: Transport, remote: Sequence[Remote]) -> dict[int, dict[int, list[Ask]]]:
    """Collective: tell every reader what to supply for this process's chunks (`remote`: each chunk's
    `remote_pieces`); returns what this process must supply: round -> writer -> pieces, in the order the
    writer unpacks them."""
    asks: list[list] = [[] for _ in range(t.size)]
    for k, by_reader in enumerate(remote):
        for reader, wanted in by_reader.items():
            asks[reader].extend((k, *ask) for ask, _ in wanted)
    out: dict[int, dict[int, list[Ask]]] = defaultdict(lambda: defaultdict(list))
    for writer, blob in enumerate(t.alltoall_bytes([marshal.dumps(a) for a in asks])):
        for k, g, name, box, nbytes in marshal.loads(blob):
            out[k][writer].append(Ask(g, name, box, nbytes))
    return out


def round_sizes(t: Transport, chunks: Sequence[Chunk]) -> list[list[int]]:
    """Every writer's chunk sizes (one small list per process): the job's round count and progress."""
    mine = json.dumps([c.nbytes for c in chunks]).encode()
    return [json.loads(b) for b in t.allgather_bytes(mine)]
