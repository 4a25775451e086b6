"""Finding source checkpoint files on the disk this process can see.

Layout on disk follows MindSpore: `model_dir/rank_<id>/*.ckpt` or `*.safetensors`, one file per rank.
When a rank directory holds several checkpoints MindSpore's rules pick one: the lexicographically last
`.ckpt` (not always the latest step: epoch 9 sorts after epoch 10, which a warning then says); the
`.safetensors` with the highest (epoch, step); or, with `--src-postfix` (MindSpore's `file_suffix`), the
one it names. A directory holding only `{stem}_part{N}` files (a per-stage conversion's output) is one
source: the rank directory itself, read as the union of its parts (`storage.parts`). A single `.ckpt`,
`.safetensors` or `.h5` file, or a unified store (a folder holding `param_name_map.json`), stands for an
unsplit model: source rank 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

from mpitrans.errors import MpitransError
from mpitrans.storage.formats import SOURCE_SUFFIXES, UNIFIED_MAP_NAME
from mpitrans.storage.parts import part_set

_RANK_DIR = re.compile(r"^rank_(\d+)$")


def discover_sources(path: str, postfix: str | None = None,
                     notes: dict[int, str] | None = None) -> dict[int, str]:
    """Map each source rank visible here to its checkpoint file; empty when nothing is visible.

    `postfix` (MindFormers' `--src_postfix`, MindSpore's `file_suffix`) picks one file per rank; where
    a rank directory holds several candidates, why the chosen one was taken goes into `notes[rank]`.
    Refuses a source mixing `.ckpt` and `.safetensors` (MindSpore refuses it too): which one the user
    meant is a guess, and resharding half a model from stale files would be silent corruption."""
    if os.path.isfile(path):
        return {0: os.path.abspath(path)}
    if os.path.isfile(os.path.join(path, UNIFIED_MAP_NAME)):  # a unified store: one full model
        return {0: os.path.abspath(os.path.join(path, UNIFIED_MAP_NAME))}
    if not os.path.isdir(path):
        return {}
    found: dict[int, str] = {}
    example: dict[str, str] = {}  # suffix -> one file of that format, for the mixing error
    for entry in sorted(os.listdir(path)):
        m = _RANK_DIR.match(entry)
        rank_dir = os.path.join(path, entry)
        if not m or not os.path.isdir(rank_dir):
            continue
        by_suffix = _checkpoints_in(rank_dir)
        for suffix, files in by_suffix.items():
            example.setdefault(suffix, os.path.join(rank_dir, files[0]))
        if len(example) > 1:
            a, b = (example[s] for s in sorted(example))
            raise MpitransError(f"{path} mixes checkpoint formats: {a} and {b}; keep one format per source "
                                f"directory")
        for suffix, files in by_suffix.items():
            chosen, note = _choose(rank_dir, files, suffix, postfix)
            if note and notes is not None:
                notes[int(m.group(1))] = note
            found[int(m.group(1))] = os.path.abspath(chosen)
    return found


def _checkpoints_in(rank_dir: str) -> dict[str, list[str]]:
    """The checkpoint files of one rank directory, by suffix, in name order."""
    out: dict[str, list[str]] = {}
    for f in sorted(os.listdir(rank_dir)):
        suffix = next((s for s in SOURCE_SUFFIXES if f.endswith(s)), None)
        if suffix and os.path.isfile(os.path.join(rank_dir, f)):
            out.setdefault(suffix, []).append(f)
    return out


def _choose(rank_dir: str, files: list[str], suffix: str, postfix: str | None) -> tuple[str, str | None]:
    """(MindSpore's choice among a rank's files, a note worth a warning or None): for `.ckpt` the last in
    name order; for `.safetensors` the one whose last two numbers (epoch, step) are highest; with a
    postfix, the one it names."""
    paths = [os.path.join(rank_dir, f) for f in files]
    if not postfix and part_set(files):
        # One rank's checkpoint split by pipeline stage: the directory stands for the union of its parts.
        return rank_dir, None
    if postfix:
        chosen = choose_by_suffix(paths, postfix, suffix)
        matching = [p for p in paths if p.endswith(postfix + suffix)]
        note = (f"{rank_dir}: {len(matching)} checkpoints end with {postfix!r}; using {os.path.basename(chosen)}"
                if len(matching) > 1 else None)
        return chosen, note
    if len(paths) == 1:
        return paths[0], None
    if suffix == ".safetensors":
        chosen = max(paths, key=_last_two_numbers)
        return chosen, (f"{rank_dir} holds {len(paths)} checkpoints; using the highest epoch/step: "
                        f"{os.path.basename(chosen)}")
    chosen = paths[-1]
    note = (f"{rank_dir} holds {len(paths)} checkpoints; using the last in name order (MindSpore's rule): "
            f"{files[-1]}")
    newest = max(paths, key=_last_two_numbers)
    if newest != chosen:
        numbers = "_".join(map(str, _last_two_numbers(newest)))
        note += (f" - NOT {os.path.basename(newest)}, which has the higher epoch/step numbers; choose with "
                 f"--src-postfix (e.g. --src-postfix {numbers}) or move the others away")
    return chosen, note


def _last_two_numbers(path: str) -> list[int]:
    """MindSpore's sort key: the last two runs of digits in the name (`net-3_200.safetensors` -> [3, 200])."""
    return [int(n) for n in re.findall(r"\d+", os.path.basename(path))][-2:]


# MindSpore's `file_suffix` forms, each with the separator it puts in front when the user left it out.
_SUFFIX_FORMS = ((re.compile(r"_?\d+-\d+_\d+"), "_"), (re.compile(r"-?\d+_\d+"), "-"), (re.compile(r"_?\d+"), "_"))
def choose_by_suffix(paths: Sequence[str], file_suffix: str, ext: str) -> str:
    """The file `file_suffix` names (`_{task}-{epoch}_{step}`, `-{epoch}_{step}` or `_{step}`, separator
    optional), the shortest name on a tie; refused, as MindSpore refuses, when that is not one file."""
    folder = os.path.dirname(paths[0]) if paths else "?"
    candidates = [p for p in paths if p.endswith(file_suffix + ext)]
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(os.path.basename(p) for p in candidates or paths)
    if not candidates:
        raise MpitransError(f"{folder}: no checkpoint ends with {file_suffix!r} (no file ends with "
                            f"{file_suffix + ext!r}; --src-postfix / file_suffix; found {names})")
    for form, sep in _SUFFIX_FORMS:
        if not form.fullmatch(file_suffix):
            continue
        tail = file_suffix if file_suffix.startswith(sep) else sep + file_suffix
        matched = [p for p in candidates if p.endswith(tail + ext)
                   and not (form is _SUFFIX_FORMS[0][0] and p.endswith("rank" + tail + ext))]
        least = min((len(os.path.basename(p)) for p in matched), default=0)
        shortest = [p for p in matched if len(os.path.basename(p)) == least]
        if len(shortest) == 1:
            return shortest[0]
        break
    raise MpitransError(f"{folder}: file_suffix {file_suffix!r} matches several files ({names}) and MindSpore's "
                        f"naming rules do not single one out; give the longest common suffix")


def rank_dirs_without_checkpoint(path: str) -> list[str]:
    """`rank_x` directories that exist here but hold no checkpoint file: worth naming in an error."""
    if not os.path.isdir(path):
        return []
    out = []
    for entry in sorted(os.listdir(path)):
        rank_dir = os.path.join(path, entry)
        if _RANK_DIR.match(entry) and os.path.isdir(rank_dir):
            if not any(f.endswith(SOURCE_SUFFIXES) for f in os.listdir(rank_dir)):
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
        if not any(f.endswith(SOURCE_SUFFIXES) and os.path.isfile(os.path.join(entry, f)) for f in os.listdir(entry)):
            return "a directory without a .ckpt or .safetensors file"
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
