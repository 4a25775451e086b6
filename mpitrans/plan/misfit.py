"""Parameters MindSpore copies whole that a model will not load: found in the plans, named with the fix.

A parameter the source strategy does not describe is copied unchanged from one source file, as MindSpore
does (silently). That is right for a scalar such as `global_step`, but not for a tensor that was in fact
split in training, the typical case being Adam's moments under a strategy saved with
`only_trainable_params=True`: `adam_m.w` stays a source shard while `w` is resharded, and loading the
result fails on a shape mismatch, long after the conversion. The output stays MindSpore's; this module
only finds those tensors so the job can say so before writing.

Pure: a planner and the plans of some targets in, findings out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mpitrans.errors import MpitransError
from mpitrans.plan.layout import box_shape, device_box, flatten_layout
from mpitrans.plan.planner import Planner, TargetPlan

# Optimizer states shaped like the parameter they follow (MindSpore's `adam_m.w`, MindFormers' names).
_STATE_PREFIXES = ("adam_m.", "adam_v.", "accu_grads.", "exp_avg.", "exp_avg_sq.", "moment1.", "moment2.")


@dataclass(frozen=True)
class Misfit:
    name: str
    target: int
    shape: tuple[int, ...]  # as copied
    expected: tuple[int, ...]  # what the destination wants
    why: str  # where `expected` comes from


def _followed(name: str) -> str | None:
    """`adam_m.layer.w` -> `layer.w`: the parameter an optimizer state is shaped like."""
    return next((name[len(p):] for p in _STATE_PREFIXES if name.startswith(p)), None)


def _dst_shard(planner: Planner, name: str, full: tuple[int, ...], target: int) -> tuple[int, ...] | None:
    """The shard of a tensor of shape `full` that the destination strategy gives `target`; None when the
    destination does not describe `name`."""
    layout = (planner.origin_dst or {}).get(name)
    if layout is None:
        return None
    try:
        return box_shape(device_box(flatten_layout(layout, full), target))
    except (MpitransError, ArithmeticError, ValueError, IndexError):
        # The copied shape cannot even be split that way. (Never fatal: this only decides a warning.)
        return ()


def misfits(planner: Planner, plans: Iterable[TargetPlan]) -> list[Misfit]:
    """Tensors copied whole (absent from the source strategy) whose shape differs from what the target
    wants: the planned shape of the parameter they follow, else the destination strategy's shard."""
    if planner.src is None:
        return []  # a full source: nothing is "absent from the strategy", every tensor is whole
    described = planner.origin_src or {}
    out = []
    for plan in plans:
        shapes: Mapping[str, tuple[int, ...]] = {x.name: x.shape for x in plan.tensors}
        for x in plan.tensors:
            if x.name in described:
                continue
            base = _followed(x.name)
            if base is not None and base in described and base in shapes:
                expected, why = shapes[base], f"{base!r} is {list(shapes[base])} there"
            else:
                expected = _dst_shard(planner, x.name, x.shape, plan.rank)
                why = "the destination strategy splits it"
            if expected is not None and expected != x.shape:
                out.append(Misfit(x.name, plan.rank, x.shape, expected, why))
    return out


def describe(found: list[Misfit], limit: int = 3) -> str:
    """One warning for the user: how many, a few examples, and the fix."""
    names = sorted({m.name for m in found})
    examples = []
    for m in sorted(found, key=lambda m: (m.name, m.target)):
        if len(examples) == limit:
            break
        if any(e.startswith(f"{m.name!r}") for e in examples):
            continue
        want = f"expected {list(m.expected)}" if m.expected else "which the destination layout cannot split"
        examples.append(f"{m.name!r} is {list(m.shape)} in target rank {m.target}, {want} ({m.why})")
    more = f"; and {len(names) - len(examples)} more" if len(names) > len(examples) else ""
    return (f"{len(names)} parameter(s) absent from the source strategy are copied whole from one source file "
            f"(as MindSpore does) in a shape that does not fit the destination, so loading the output into the "
            f"model will fail on them: {'; '.join(examples)}{more}. Fix: save the source strategy with "
            f"only_trainable_params=False so it describes them, or leave them out (--drop-optimizer-state for "
            f"optimizer state, --exclude NAME otherwise)")
