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
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from math import prod

from mpitrans.errors import MpitransError
from mpitrans.job import manifest
from mpitrans.job.agree import agree
from mpitrans.job.lora import LoraMerger
from mpitrans.job.options import JobOptions, check_single_target
from mpitrans.job.prepare import plan_job, start
from mpitrans.job.rounds import Rounds, chunk_size, my_chunks, run_with_sink
from mpitrans.job.run import round_robin_placement
from mpitrans.job.sinks import ChunkSink
from mpitrans.job.sources import SourceFiles
from mpitrans.job.summary import RankStats
from mpitrans.job.transport import Transport, make_transport
from mpitrans.metadata import itemsize
from mpitrans.plan.planner import TargetPlan
from mpitrans.plan.schedule import Chunk, Segment, contiguous_boxes
from mpitrans.storage.base import SourceReader
from mpitrans.storage.formats import open_source, target_format


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


class _Comparer(ChunkSink):
    """Stands where the disk writer stands in a transform, comparing chunks instead of writing them."""

    def __init__(self, targets: list[TargetPlan], path_of: Callable[[TargetPlan], str], chunk_hint: int,
                 ordered: bool = True) -> None:
        super().__init__("mpitrans-verify", chunk_hint)
        self.targets = targets
        self.ordered = ordered  # .ckpt keeps MindSpore's parameter order; other formats their own
        self.path_of = path_of
        self.failures: dict[int, str] = {}
        self._open: dict[int, SourceReader | None] = {}
        self._lora = LoraMerger()  # a --lora-merge job's weights are compared merged

    def _target_file(self, index: int) -> SourceReader | None:
        if index not in self._open:
            target = self.targets[index]
            try:
                reader = open_source(self.path_of(target))
            except MpitransError as exc:  # a corrupt target is a failed check, not a failed job
                self.failures.setdefault(target.rank, str(exc))
                self._open[index] = None
                return None
            got = [(m.name, m.dtype, tuple(m.shape)) for m in reader.tensors()]
            want = [(x.name, x.dtype, tuple(x.shape)) for x in target.tensors
                    if all(x.shape) and x.written]
            if not self.ordered:
                got, want = sorted(got), sorted(want)
            if got != want:
                self.failures.setdefault(target.rank, _first_difference(want, got))
            self._open[index] = reader
        return self._open[index]

    def consume(self, chunk: Chunk, view: memoryview) -> None:
        for seg in chunk.segments:
            target = self.targets[seg.target_index]
            if target.rank in self.failures or seg.start == seg.stop:
                continue
            reader = self._target_file(seg.target_index)
            if reader is None or target.rank in self.failures:
                continue
            self._compare(target, seg, reader, view)

    def _compare(self, target: TargetPlan, seg: Segment, reader: SourceReader, view: memoryview) -> None:
        tensor = target.tensors[seg.tensor_index]
        isz = itemsize(tensor.dtype)
        want = view[seg.chunk_offset:seg.chunk_offset + (seg.stop - seg.start) * isz]
        if tensor.role:
            self._lora.take(tensor, seg.start, want)
            return
        if tensor.lora_scaling is not None:
            want = memoryview(self._lora.merge(tensor, seg.start, seg.stop, want))
        out = memoryview(bytearray((seg.stop - seg.start) * isz))
        for box, off in contiguous_boxes(tensor.shape, seg.start, seg.stop):
            n = prod(b - a for a, b in box)
            reader.read_box(tensor.name, box, out[off * isz:(off + n) * isz])
        if want != out:
            self.failures[target.rank] = (
                f"parameter {tensor.name!r} differs from the source (elements {seg.start}..{seg.stop})"
            )

    def close(self) -> None:
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


def verify(src_checkpoint: str, dst_checkpoint: str, src_strategy: str | None = None,
           dst_strategy: str | None = None, *, comm: object = None, **options: object) -> list[TargetResult]:
    """Collective: every target's bytes against the source region it should hold; results on every rank.
    `options` are the transform's (`JobOptions` fields: prefix, filters, output_format, ...), so the same
    options check the same job."""
    opts = JobOptions(src_checkpoint, dst_checkpoint, src_strategy, dst_strategy, **options)  # type: ignore[arg-type]
    return verify_job(opts, make_transport(comm))


def verify_job(opts: JobOptions, t: Transport) -> list[TargetResult]:
    """`verify` for a ready options object and transport (what the command line calls)."""
    if target_format(opts.output_format).store:  # the same refusal on every rank, before any collective
        raise MpitransError(f"verify does not check --output-format {opts.output_format} stores yet; read the "
                            f"store back as a source (--src-checkpoint) and compare that transform's output")
    setup = start(t, opts.src_checkpoint, opts.src_strategy, opts.dst_strategy, opts.prefix, opts.selection())
    ordered = opts.output_format == "ckpt"  # other formats lay tensors out in their own order

    def path_of(target: TargetPlan | int) -> str:
        tr = target if isinstance(target, int) else target.rank
        return os.path.join(opts.dst_checkpoint, opts.relpath(tr, setup.stem(tr)))

    agree(t, lambda: check_single_target(opts.dst_file, setup.targets))
    checker = _checkers(t, setup.targets, path_of)
    where = {tr: checker.get(tr, tr % t.size) for tr in setup.targets}
    reading, _ = agree(t, opts.ckpt_files)  # encrypted sources are decrypted as the transform does
    try:
        job = plan_job(setup, where, opts.strict, reading)
        mine = [job.plans[tr] for tr in sorted(job.plans) if tr in checker]
        comparer = _Comparer(mine, path_of, chunk_size(opts.max_buffer, t.size), ordered)
        files = SourceFiles(job.visible, job.metas, job.sources, reading)
        chunks = my_chunks(t, job.moves({p.rank: p for p in mine}, where), comparer.chunk_hint)
        sink = comparer if mine else None
        run_with_sink(Rounds(t, chunks, files, sink, RankStats(t.rank, socket.gethostname())), sink, files)
    finally:
        if reading.scratch is not None:
            reading.scratch.cleanup()
    results = _results(t, mine, comparer.failures, opts.dst_checkpoint, path_of)
    everything = []
    for blob in t.allgather_bytes(json.dumps([asdict(r) for r in results]).encode()):
        everything.extend(TargetResult(**r) for r in json.loads(blob))
    for tr in sorted(set(setup.targets) - set(checker)):
        everything.append(TargetResult(tr, -1, "", path_of(tr), False, "file not found on any host"))
    return sorted(everything, key=lambda r: r.target)


def _checkers(t: Transport, targets: list[int], path_of: Callable[[int], str]) -> dict[int, int]:
    """Each target is checked by a process that sees its file, its owner by placement when it can."""
    here = [tr for tr in targets if os.path.isfile(path_of(tr))]
    seen_by: dict[int, list[int]] = {}
    for r, blob in enumerate(t.allgather_bytes(json.dumps(here).encode())):
        for tr in json.loads(blob):
            seen_by.setdefault(tr, []).append(r)
    owner = round_robin_placement(sorted(targets), t.size)
    return {tr: (owner[tr] if owner[tr] in rs else rs[0]) for tr, rs in seen_by.items()}


def _results(t: Transport, mine: list[TargetPlan], failures: dict[int, str], dst_checkpoint: str,
             path_of: Callable[[TargetPlan], str]) -> list[TargetResult]:
    """This process's verdicts: the byte comparison, then the manifest's size and CRC where there is one."""
    found, problem = read_manifest(dst_checkpoint) if mine else (None, "")
    missing = os.path.join(dst_checkpoint, manifest.MANIFEST_NAME)
    host = socket.gethostname()
    results = []
    for plan in mine:
        detail = failures.get(plan.rank, "")
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
    return results


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
