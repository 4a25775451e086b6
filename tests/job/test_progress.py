"""The progress display: one unit per line, written once, and one final line."""

from __future__ import annotations

import io

import pytest

from mpitrans.job.progress import Progress

MIB = 1 << 20


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("done", "total", "expected"), [
    (int(7.5 * MIB), int(7.5 * MIB), "7.5/7.5 MiB"),
    (3 * MIB, 255 * MIB, "3.0/255.0 MiB"),
    (0, 256 * MIB, "0.00/0.25 GiB"),
    (1 << 30, 5 << 29, "1.00/2.50 GiB"),
])
def test_amounts_share_one_unit(done, total, expected):
    out = io.StringIO()
    Progress(total, stream=out, interval=0).update(done)
    line = out.getvalue()
    assert f" {expected} " in line, line
    assert "M/" not in line and "M GiB" not in line, line  # 7.5M/7.5M GiB printed the unit twice


def test_a_log_gets_one_final_line():
    out = io.StringIO()
    p = Progress(10 * MIB, stream=out, interval=0)
    p.update(4 * MIB)
    p.update(10 * MIB)  # the last round
    p.update(10 * MIB, final=True)  # the end of the job: the same amount, so no second 100% line
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "40.0%" in lines[0] and "100.0%" in lines[1], lines
    p.update(10 * MIB, final=True)  # nothing after the end
    assert out.getvalue().splitlines() == lines


def test_the_final_line_appears_when_the_last_round_was_not_shown():
    out = io.StringIO()
    p = Progress(10 * MIB, stream=out, interval=3600)
    p.update(1 * MIB)  # shown: the first update
    p.update(10 * MIB)  # within the interval: not shown
    p.update(10 * MIB, final=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "100.0%" in lines[1] and lines[1].count("100.0%") == 1, lines


def test_a_terminal_bar_is_redrawn_and_ended_once():
    out = _Terminal()
    p = Progress(10 * MIB, stream=out, interval=0)
    p.update(5 * MIB)
    p.update(10 * MIB)
    p.update(10 * MIB, final=True)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    assert text.count("100.0%") == 1, repr(text)
    assert text.count("\r") == 2
