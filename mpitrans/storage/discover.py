"""Finding source checkpoint files on the disk this process can see.

Layout on disk follows MindSpore: `model_dir/rank_<id>/*.ckpt`, one file per rank; when a rank directory
holds several checkpoints the lexicographically last one is used (MindSpore's rule for .ckpt; it is
not always the latest step: epoch 9 sorts after epoch 10, which the warning then says), unless a
`--src-postfix` selects one. A single `.ckpt` file stands for an unsplit model: source rank 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

from mpitrans.errors import MpitransError

_RANK_DIR = re.compile(r"^rank_(\d+)$")


def discover_sources(path: str, postfix: str | None = None,
                     notes: dict[int, str] | None = None) -> dict[int, str]:
    """Map each source rank visible here to its checkpoint file; empty when nothing is visible.

    `postfix` (MindFormers' `--src_postfix` / `file_suffix`) keeps only `*{postfix}.ckpt`; where a rank
    directory still holds several, why the chosen one was taken goes into `notes[rank]`."""
    if os.path.isfile(path):
        return {0: os.path.abspath(path)}
    if not os.path.isdir(path):
        return {}
    found: dict[int, str] = {}
    for entry in sorted(os.listdir(path)):
        m = _RANK_DIR.match(entry)
        rank_dir = os.path.join(path, entry)
        if not m or not os.path.isdir(rank_dir):
            continue
        files = sorted(f for f in os.listdir(rank_dir) if f.endswith(".ckpt")
                       and os.path.isfile(os.path.join(rank_dir, f)))
        chosen, note = choose_checkpoint(rank_dir, files, postfix)
        if chosen is None:
            continue
        if note and notes is not None:
            notes[int(m.group(1))] = note
        found[int(m.group(1))] = os.path.abspath(os.path.join(rank_dir, chosen))
    return found


def _numbers(name: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", name)]


def choose_checkpoint(rank_dir: str, files: Sequence[str], postfix: str | None) -> tuple[str | None, str | None]:
    """(the file of this rank, a note worth a warning or None) among the sorted `.ckpt` names `files`.

    Without `postfix`: MindSpore's rule for .ckpt, the last in name order (`transform_checkpoints` sorts
    and keeps the last). Name order puts epoch 9 after epoch 10, so the note says when MindSpore's
    numeric rule (the one it applies to safetensors: the last two numbers of the name) would differ.
    With `postfix`: MindSpore's `file_suffix` matching (`_find_most_matching_file`)."""
    if postfix:
        files = [f for f in files if f.endswith(f"{postfix}.ckpt")]
        if not files:
            raise MpitransError(f"{rank_dir}: no checkpoint ends with {postfix!r}.ckpt (--src-postfix)")
        if len(files) > 1:
            picked = _match_postfix(rank_dir, files, postfix)
            return picked, f"{rank_dir}: {len(files)} checkpoints end with {postfix!r}; using {picked}"
        return files[0], None
    if len(files) <= 1:
        return (files[0] if files else None), None
    picked = files[-1]
    note = f"{rank_dir} holds {len(files)} checkpoints; using the last in name order (MindSpore's rule): {picked}"
    newest = max(files, key=lambda f: _numbers(f)[-2:])
    if newest != picked:
        note += (f" - NOT {newest}, which has the higher epoch/step numbers; choose with --src-postfix "
                 f"(e.g. --src-postfix {'_'.join(map(str, _numbers(newest)[-2:]))}) or move the others away")
    return picked, note


_SUFFIX_FORMS = ((re.compile(r"^_?\d+-\d+_\d+$"), "_"), (re.compile(r"^-?\d+_\d+$"), "-"),
                 (re.compile(r"^_?\d+$"), "_"))


def _match_postfix(rank_dir: str, files: Sequence[str], postfix: str) -> str:
    """MindSpore's disambiguation of several `*{postfix}` files: a `task-epoch_step`, `epoch_step` or
    `step` postfix must follow its separator (`_1-10_100`, `-10_100`, `_100`); the shortest such name wins."""
    for form, sep in _SUFFIX_FORMS:
        if not form.match(postfix):
            continue
        full = postfix if postfix.startswith(sep) else sep + postfix
        matched = [f for f in files if f.endswith(f"{full}.ckpt") and not f.endswith(f"rank{full}.ckpt")]
        if matched:
            shortest = min(len(f) for f in matched)
            best = [f for f in matched if len(f) == shortest]
            if len(best) == 1:
                return best[0]
        break
    raise MpitransError(f"{rank_dir}: several checkpoints end with {postfix!r} ({', '.join(files)}); "
                        f"give a longer --src-postfix that names one")


def rank_dirs_without_checkpoint(path: str) -> list[str]:
    """`rank_x` directories that exist here but hold no .ckpt: worth naming in an error."""
    if not os.path.isdir(path):
        return []
    out = []
    for entry in sorted(os.listdir(path)):
        rank_dir = os.path.join(path, entry)
        if _RANK_DIR.match(entry) and os.path.isdir(rank_dir):
            if not any(f.endswith(".ckpt") for f in os.listdir(rank_dir)):
                out.append(rank_dir)
    return out


def rank_span(ranks: Iterable[int], limit: int = 6) -> str:
    """`rank_x` names for a message, runs folded: "rank_0..rank_3, rank_7"; at most `limit` runs shown.

    Strategies may describe up to a million devices; a message listing every missing rank would be
    megabytes long, so long lists are cut with a count of what was left out.
    """
    ordered = sorted(set(ranks))
    runs: list[tuple[int, int]] = []
    for r in ordered:
        if runs and r == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], r)
        else:
            runs.append((r, r))
    parts = [f"rank_{a}" if a == b else f"rank_{a}, rank_{b}" if b == a + 1 else f"rank_{a}..rank_{b}"
             for a, b in runs[:limit]]
    if len(runs) > limit:
        rest = sum(b - a + 1 for a, b in runs[limit:])
        parts.append(f"and {rest} more")
    return ", ".join(parts)


def rank_entry_problem(path: str, rank: int) -> str | None:
    """Why `path/rank_<rank>` yields no checkpoint here, when something by that name exists: worth
    saying, since a `rank_x` that is a file or an empty directory is skipped as if it were absent."""
    entry = os.path.join(path, f"rank_{rank}")
    if not os.path.lexists(entry):
        return None
    if not os.path.isdir(entry):
        return "a file, not a directory"
    try:
        if not any(f.endswith(".ckpt") and os.path.isfile(os.path.join(entry, f)) for f in os.listdir(entry)):
            return "a directory without a .ckpt file"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None


def describe_missing(src_checkpoint: str, needed_by: Mapping[int, Iterable[int]]) -> str:
    """One line naming source ranks no process sees and the targets that need them, with what is
    wrong where something by that name exists (a file instead of a directory, an empty directory)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for g, targets in sorted(needed_by.items()):
        groups.setdefault(tuple(sorted(targets)), []).append(g)
    parts = []
    for targets, ranks in groups.items():
        tail = f" (needed by target rank(s) {_span_ints(targets)})" if targets else ""
        parts.append(rank_span(ranks) + tail)
    problems = []
    if os.path.isfile(src_checkpoint):
        problems.append(f"{src_checkpoint} is one file, read as the full checkpoint of rank_0")
    for g in sorted(needed_by)[:64]:
        why = rank_entry_problem(src_checkpoint, g)
        if why:
            problems.append(f"rank_{g} is {why}")
    text = "; ".join(parts[:6]) + (f"; and {len(parts) - 6} more group(s)" if len(parts) > 6 else "")
    return text + (f" [{'; '.join(problems[:4])}]" if problems else "")


def _span_ints(values: Sequence[int]) -> str:
    return rank_span(values).replace("rank_", "")
