"""Who reads what, and what each reader must supply, agreed through two compact request exchanges.

No process sees every plan. Instead, as torch.distributed.checkpoint's local plan -> global plan ->
final plan round does:

1. every writer sends each region its targets need to that region's *owner* (a process chosen by a hash
   of the region's identity: tensor, source box, candidate files);
2. each owner decides, for all writers wanting that region together and in target order, who reads it
   (`plan.assign`: own host first, read once per shared disk, else the least-loaded process that sees a
   candidate), and answers each writer;
3. every writer cuts its targets into chunks (`plan.schedule`) and tells each reader which pieces to read
   for it in which round.

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
from mpitrans.plan.assign import ReaderTable, assign_region, new_chooser, region_key
from mpitrans.plan.planner import TargetPlan
from mpitrans.plan.schedule import Chunk


class Ask(NamedTuple):
    """One piece a reader supplies: `nbytes` bytes of `src_box` of `tensor` in source rank `src_rank`'s file."""

    src_rank: int
    tensor: str
    src_box: tuple
    nbytes: int


def _owner(key: tuple, nprocs: int) -> int:
    return zlib.crc32(repr(key).encode()) % nprocs if nprocs > 1 else 0


def decide_readers(t: Transport, plans: Mapping[int, TargetPlan], seers: Mapping[int, Sequence[int]],
                   file_ids: Mapping[int, Mapping[int, tuple]]) -> ReaderTable:
    """Collective: the reader of every region of this process's `plans`."""
    wants: list[list] = [[] for _ in range(t.size)]
    table: ReaderTable = {}
    me = t.rank
    mine = {g for g, procs in seers.items() if me in procs}  # source files this process sees
    for tr in sorted(plans):
        for ki, tensor in enumerate(plans[tr].tensors):
            for ri, region in enumerate(tensor.regions):
                if tensor.unique:
                    # Wanted by this writer only: if it sees a candidate, it reads it itself (rule 1 of
                    # `plan.assign`, what the owner would answer); nobody else needs to hear of it.
                    local = next((g for g in region.candidates if g in mine), None)
                    if local is not None:
                        table[(tr, ki, ri)] = (me, local)
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


def exchange_asks(t: Transport, chunks: Sequence[Chunk]) -> dict[int, dict[int, list[Ask]]]:
    """Collective: tell every reader what to supply for this process's chunks; returns what this process
    must supply: round -> writer -> pieces, in the order the writer unpacks them."""
    asks: list[list] = [[] for _ in range(t.size)]
    for k, chunk in enumerate(chunks):
        for p in chunk.pieces:
            if p.reader != t.rank:
                asks[p.reader].append((k, p.src_rank, p.tensor, p.src_box, p.nbytes))
    out: dict[int, dict[int, list[Ask]]] = defaultdict(lambda: defaultdict(list))
    for writer, blob in enumerate(t.alltoall_bytes([marshal.dumps(a) for a in asks])):
        for k, g, name, box, nbytes in marshal.loads(blob):
            out[k][writer].append(Ask(g, name, box, nbytes))
    return out


def round_sizes(t: Transport, chunks: Sequence[Chunk]) -> list[list[int]]:
    """Every writer's chunk sizes (one small list per process): the job's round count and progress."""
    mine = json.dumps([c.nbytes for c in chunks]).encode()
    return [json.loads(b) for b in t.allgather_bytes(mine)]
