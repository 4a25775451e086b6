"""`verify`: check finished targets against their sources, byte for byte, without trusting the writer.

The plan is recomputed from the sources and strategies exactly as a transform would; then the same
rounds move the same bytes, but instead of writing a chunk each rank compares it with the target file
it can see. A target is checked on a process that sees its file (the owner by placement when it can),
so this works without a shared disk too. When the output directory holds a manifest, each file's size
and CRC-32C are checked against it as well; a missing manifest is said (only the sources were compared),
and one that cannot be read fails the check, since a manifest is what `--resume` and readers trust.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mpitrans.errors import MpitransError
from mpitrans.job import manifest
from mpitrans.job.engine import (
    DEFAULT_MAX_BUFFER,
    RankStats,
    _agree,
    _run_rounds,
    _SourceFiles,
    check_prefix,
    prepare,
    round_robin_placement,
)
from mpitrans.job.transport import make_transport
from mpitrans.metadata import itemsize
from mpitrans.plan.planner import TargetPlan
from mpitrans.plan.schedule import contiguous_boxes
from mpitrans.storage.formats import open_source, target_filename


@dataclass
class TargetResult:
    target: int
    rank: int  # MPI rank that checked it (-1: nobody could see the file)
    host: str
    path: str
    ok: bool
    detail: str = ""
    note: str = ""  # e.g. no manifest on that host: only the comparison with the sources was done


def read_manifest(dst_checkpoint: str) -> tuple[dict | None, str]:
    """(the manifest, "") or (None, why it cannot be used: "missing: ..." or a failure naming the file).

    `manifest.read` answers None for both, which suits `--resume` (either way nothing is reused), but
    verify must tell them apart: a missing manifest is normal after `transform_checkpoints`, a garbled
    one is damage the user needs to hear about.
    """
    path = os.path.join(dst_checkpoint, manifest.MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"manifest {path} cannot be read: {getattr(exc, 'strerror', None) or exc}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"manifest {path} is not valid JSON ({exc})"
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None, f"manifest {path} is not an mpitrans manifest (no \"files\" table)"
    return data, ""


class _Comparer(threading.Thread):
    """Stands where the disk writer stands in a transform, comparing chunks instead of writing them."""

    def __init__(self, targets: list[TargetPlan], path_of: Callable[[TargetPlan], str]) -> None:
        super().__init__(name="mpitrans-verify", daemon=True)
        self.targets = targets
        self.path_of = path_of
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.free: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.chunk_hint = 0
        self.failures: dict[int, str] = {}
        self._open: dict[int, object] = {}

    def _target_file(self, index: int):
        if index not in self._open:
            target = self.targets[index]
            path = self.path_of(target)
            try:
                reader = open_source(path)
            except MpitransError as exc:  # a corrupt target is a failed check, not a failed job
                self.failures.setdefault(target.rank, str(exc))
                self._open[index] = None
                return None
            got = [(m.name, m.dtype, tuple(m.shape)) for m in reader.tensors()]
            want = [(x.name, x.dtype, tuple(x.shape)) for x in target.tensors if all(x.shape)]
            if got != want:
                detail = _first_difference(want, got)
                self.failures.setdefault(target.rank, detail)
            self._open[index] = reader
        return self._open[index]

    def run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                chunk, buf = item
                view = memoryview(buf)
                for seg in chunk.segments:
                    target = self.targets[seg.target_index]
                    if target.rank in self.failures or seg.start == seg.stop:
                        continue
                    reader = self._target_file(seg.target_index)
                    if target.rank in self.failures:
                        continue
                    tensor = target.tensors[seg.tensor_index]
                    isz = itemsize(tensor.dtype)
                    actual = bytearray((seg.stop - seg.start) * isz)
                    out = memoryview(actual)
                    for box, off in contiguous_boxes(tensor.shape, seg.start, seg.stop):
                        n = 1
                        for a, b in box:
                            n *= b - a
                        reader.read_box(tensor.name, box, out[off * isz:(off + n) * isz])
                    expected = view[seg.chunk_offset:seg.chunk_offset + len(actual)]
                    if expected != out:
                        self.failures[target.rank] = (
                            f"parameter {tensor.name!r} differs from the source (elements {seg.start}..{seg.stop})"
                        )
                del view
                self.free.put(buf)
        except BaseException as exc:
            self.error = exc
            while self.queue.get() is not None:
                pass
        finally:
            for reader in self._open.values():
                if reader is not None:
                    reader.close()


def _first_difference(want, got) -> str:
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        if w != g:
            return f"tensor #{i} is {g[0]!r} {g[1]}{list(g[2])}, expected {w[0]!r} {w[1]}{list(w[2])}"
    if len(got) < len(want):
        return f"parameter {want[len(got)][0]!r} is missing"
    return f"unexpected extra parameter {got[len(want)][0]!r}"


def verify(
    src_checkpoint: str,
    dst_checkpoint: str,
    src_strategy: str | None = None,
    dst_strategy: str | None = None,
    prefix: str = "checkpoint_",
    comm=None,
    max_buffer: int = DEFAULT_MAX_BUFFER,
) -> list[TargetResult]:
    """Collective: every target's bytes against the source region it should hold; results on every rank."""
    t = make_transport(comm)
    host = socket.gethostname()
    _agree(t, lambda: check_prefix(prefix))
    job = prepare(t, src_checkpoint, src_strategy, dst_strategy, prefix)

    def path_of(target: TargetPlan) -> str:
        return os.path.join(dst_checkpoint, f"rank_{target.rank}", target_filename(target.stem))

    here = [tr for tr, plan in job.plans.items() if os.path.isfile(path_of(plan))]
    seen_by: dict[int, list[int]] = {}
    for r, blob in enumerate(t.allgather_bytes(json.dumps(here).encode())):
        for tr in json.loads(blob):
            seen_by.setdefault(tr, []).append(r)
    owner = round_robin_placement(sorted(job.plans), t.size)
    checker = {tr: (owner[tr] if owner[tr] in rs else rs[0]) for tr, rs in seen_by.items()}
    plans = {tr: job.plans[tr] for tr in checker}
    mine = [plans[tr] for tr in sorted(plans) if checker[tr] == t.rank]
    comparer = _Comparer(mine, path_of)
    fanout = max(1, t.size - 1)
    comparer.chunk_hint = max(1 << 20, min(max_buffer // (3 + min(fanout, 8)), 512 << 20))
    files = _SourceFiles(job.visible, job.metas)
    comparer.start()
    try:
        _run_rounds(t, plans, checker, job.seers, files, comparer if mine else None, comparer.chunk_hint,
                    RankStats(t.rank, host), job.file_ids)
    finally:
        comparer.queue.put(None)
        comparer.join()
        files.close()
    if comparer.error is not None:
        raise comparer.error
    found, problem = read_manifest(dst_checkpoint) if mine else (None, "")
    missing = os.path.join(dst_checkpoint, manifest.MANIFEST_NAME)
    results = []
    for plan in mine:
        detail = comparer.failures.get(plan.rank, "")
        note = ""
        if problem == "missing":
            note = f"no manifest {missing}: compared with the sources only"
        elif problem:
            detail = detail or problem
        else:
            entry = found["files"].get(str(plan.rank))
            if entry is None:
                detail = detail or f"manifest {missing} does not list target rank {plan.rank}"
            elif not detail:
                detail = manifest.check_file(dst_checkpoint, entry) or ""
        results.append(TargetResult(plan.rank, t.rank, host, path_of(plan), not detail, detail, note))
    everything = []
    for blob in t.allgather_bytes(json.dumps([asdict(r) for r in results]).encode()):
        everything.extend(TargetResult(**r) for r in json.loads(blob))
    for tr in sorted(set(job.plans) - set(checker)):
        everything.append(TargetResult(tr, -1, "", path_of(job.plans[tr]), False, "file not found on any host"))
    return sorted(everything, key=lambda r: r.target)


def format_results(results: list[TargetResult]) -> str:
    bad = [r for r in results if not r.ok]
    lines = [f"  {'target':>6} {'rank':>4} {'host':<16} result"]
    for r in results:
        lines.append(f"  {r.target:>6} {r.rank:>4} {r.host[:16]:<16} {'ok' if r.ok else 'FAIL: ' + r.detail}")
    head = (f"verify: all {len(results)} target files match their sources" if not bad else
            f"verify: {len(bad)} of {len(results)} targets FAILED; first: target rank {bad[0].target}: "
            f"{bad[0].detail}")
    notes = sorted({r.note for r in results if r.note})
    return "\n".join([head, *lines, *(f"verify: note: {n}" for n in notes)])
