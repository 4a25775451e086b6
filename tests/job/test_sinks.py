"""The disk writer publishes a target only when every byte of it arrived, and never hangs on failure."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mpitrans.errors import MpitransError
from mpitrans.job.sinks import ABORT, END, DiskWriter
from mpitrans.plan.planner import OutTensor, Region, TargetPlan
from mpitrans.plan.schedule import Chunk, Segment
from mpitrans.storage.ckpt import index_checkpoint


def _targets() -> list[TargetPlan]:
    region = Region(((0, 4),), ((0, 4),), (0,))
    return [TargetPlan(r, f"checkpoint_{r}", [OutTensor(f"w{r}", "float32", (4,), (region,)),
                                              OutTensor(f"b{r}", "float32", (4,), (region,))])
            for r in range(2)]


def _chunk(target: int, tensor: int) -> tuple[Chunk, bytearray]:
    return Chunk(16, [Segment(target, tensor, 0, 4, 0)], []), bytearray(range(16))


def _writer(tmp_path: Path, done: list) -> DiskWriter:
    w = DiskWriter(_targets(), lambda t: str(tmp_path / f"rank_{t.rank}" / f"{t.stem}.ckpt"), 0, 0)
    w.on_done = lambda target, size, crc: done.append(target)
    w.start()
    return w


def _final(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.rglob("*.ckpt") if not p.name.startswith("."))


def _leftovers(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.rglob(".*.tmp-*"))


def test_end_publishes_every_complete_target(tmp_path):
    done: list[int] = []
    w = _writer(tmp_path, done)
    for item in (_chunk(0, 0), _chunk(0, 1), _chunk(1, 0), _chunk(1, 1)):
        w.queue.put(item)
    w.queue.put(END)
    w.join(10)
    assert not w.is_alive() and w.error is None
    assert done == [0, 1]
    assert [e.name for e in index_checkpoint(tmp_path / "rank_1" / "checkpoint_1.ckpt").entries] == ["w1", "b1"]


def test_abort_mid_target_publishes_and_records_nothing_more(tmp_path):
    done: list[int] = []
    w = _writer(tmp_path, done)
    for item in (_chunk(0, 0), _chunk(0, 1), _chunk(1, 0)):  # target 1 is half written
        w.queue.put(item)
    w.queue.put(ABORT)
    w.join(10)
    assert not w.is_alive() and w.error is None
    # Target 0 was complete when target 1 began, so it was published; target 1 was not, nor its empty file.
    assert done == [0]
    assert _final(tmp_path) == [tmp_path / "rank_0" / "checkpoint_0.ckpt"]
    assert not _leftovers(tmp_path)


def test_abort_before_anything_creates_no_empty_files(tmp_path):
    done: list[int] = []
    w = _writer(tmp_path, done)
    w.queue.put(ABORT)
    w.join(10)
    assert done == [] and not _final(tmp_path)


def test_end_with_a_missing_tensor_is_an_error_not_a_short_file(tmp_path):
    done: list[int] = []
    w = _writer(tmp_path, done)
    for item in (_chunk(0, 0), _chunk(0, 1), _chunk(1, 0)):  # target 1's second tensor never came
        w.queue.put(item)
    w.queue.put(END)
    w.join(10)
    assert isinstance(w.error, MpitransError) and "checkpoint_1.ckpt: incomplete (parameter 'b1'" in str(w.error)
    assert done == [0] and not (tmp_path / "rank_1" / "checkpoint_1.ckpt").exists()
    assert not _leftovers(tmp_path)


def test_a_failure_after_the_end_signal_does_not_hang(tmp_path, monkeypatch):
    """Publishing the last target fails after END was taken: the thread must end, not wait for more."""
    from mpitrans.storage import ckpt

    def broken_close(self):
        self.abort()
        raise OSError(28, "No space left on device")

    done: list[int] = []
    w = _writer(tmp_path, done)
    monkeypatch.setattr(ckpt.CheckpointWriter, "close", broken_close)
    w.queue.put(_chunk(0, 0))
    w.queue.put(_chunk(0, 1))
    w.queue.put(END)
    w.join(10)
    assert not w.is_alive(), "writer thread hangs after failing on END"
    assert isinstance(w.error, MpitransError) and "No space left" in str(w.error)
    assert done == [] and not _final(tmp_path) and not _leftovers(tmp_path)


def test_a_failed_writer_keeps_draining_so_the_main_thread_never_blocks(tmp_path):
    done: list[int] = []
    w = _writer(tmp_path, done)
    (tmp_path / "rank_0").mkdir()
    (tmp_path / "rank_0" / "checkpoint_0.ckpt").mkdir()  # publishing target 0 fails
    put_all = threading.Event()

    def feed():
        for item in (_chunk(0, 0), _chunk(0, 1), _chunk(1, 0), _chunk(1, 1), _chunk(1, 1), _chunk(1, 1)):
            w.queue.put(item)
        w.queue.put(END)
        put_all.set()

    threading.Thread(target=feed, daemon=True).start()
    assert put_all.wait(10), "the main thread blocked on the queue of a failed writer"
    w.join(10)
    assert w.error is not None and done == []


@pytest.mark.parametrize("signal_item", [END, ABORT])
def test_signals_are_distinct_objects(signal_item):
    assert signal_item in (END, ABORT) and END is not ABORT
