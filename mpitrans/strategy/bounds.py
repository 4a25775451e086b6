"""Arithmetic sanity bounds on a strategy, checked before anything is sized from it.

Everything later (rank lists, plans, per-device loops, the number of target files) is sized by the device
matrix, so a strategy whose numbers are absurd must be refused while it is still a handful of integers:
a device matrix of ``[2**24]`` otherwise grows a rank past 2 GB, ``[2**20, 2**20]`` ends in a
MemoryError, a ``0`` in it gives "different models" messages from far downstream, and a tensor-map axis
beyond the device matrix an IndexError. MindSpore has no such checks (it fails late, or not at all), so
these bounds are ours; each is one arithmetic comparison and names the file and parameter.

The limits:

* ``MAX_DEVICES`` (2**20 = 1,048,576): the device count of one layout (product of its device matrix) and
  of the whole job (devices per stage x pipeline stages). Today's largest training jobs use about 10**5
  accelerators; a strategy claiming more than a million is damaged or not meant for this tool, and one
  target file per device would be written.
* every device-matrix dimension is at least 1;
* every tensor-map entry is -1 (not split) or a device axis ``0 <= a < len(dev_matrix)``;
* ``opt_weight_shard_size`` is -1 (all replicas), 0 (off) or a positive group size. Whether a group size
  fits the layout's replicas is checked per parameter when a plan uses it (a LayoutError naming the
  parameter), not here: a strategy may carry layouts the job never uses;
* the stage of a single-stage strategy file puts its ranks below ``MAX_DEVICES``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mpitrans.errors import StrategyError
from mpitrans.strategy.layout_map import layout_map
from mpitrans.strategy.model import RawLayout, StrategyFile

__all__ = ["MAX_DEVICES", "check_bounds"]

MAX_DEVICES = 1 << 20


def _where(strategy: StrategyFile, name: str | None = None) -> str:
    src = f"strategy {strategy.source}" if strategy.source else "strategy"
    return f"{src}: parameter {name!r}" if name is not None else src


def _short(values: Sequence) -> str:
    """A list for a one-line message: at most 8 entries shown."""
    items = [list(v) if isinstance(v, tuple) else v for v in values]
    return str(items) if len(items) <= 8 else str(items[:8])[:-1] + f", ... ({len(items)} entries)]"


def _bounded_product(dims: Sequence[int]) -> int:
    """Product of `dims`, stopping as soon as it passes MAX_DEVICES (so 2**64-sized products stay cheap)."""
    out = 1
    for d in dims:
        out *= d
        if out > MAX_DEVICES:
            return out
    return out


def _tensor_map_axes(raw: RawLayout) -> list[int]:
    """Every device axis the tensor map names, classic and multi-axis forms alike."""
    return [a for message in raw.tensor_map for a in message]


def _tmap(raw: RawLayout) -> str:
    """The tensor map as a strategy file shows it: flat for one TensorMap message, else one list per dim."""
    return _short(raw.tensor_map[0]) if len(raw.tensor_map) == 1 else _short(raw.tensor_map)


def _check_layout(strategy: StrategyFile, name: str, raw: RawLayout) -> None:
    where = _where(strategy, name)
    messages = raw.dev_matrix_messages()
    if not messages:
        return  # layout_map names this one ("the layout has no dev_matrix")
    dev = messages[0]  # MindSpore uses the first message
    if any(d < 1 for d in dev):
        raise StrategyError(f"{where}: device matrix {_short(dev)} has a dimension below 1; every dimension "
                            f"counts devices and must be at least 1")
    devices = _bounded_product(dev)
    if devices > MAX_DEVICES:
        raise StrategyError(f"{where}: device matrix {_short(dev)} describes more than {MAX_DEVICES} devices "
                            f"(mpitrans' limit, 2^20); the strategy file is damaged or not a training strategy")
    for axis in _tensor_map_axes(raw):
        if axis != -1 and not 0 <= axis < len(dev):
            valid = f"0..{len(dev) - 1}" if dev else "none"
            raise StrategyError(f"{where}: tensor map {_tmap(raw)} names device axis "
                                f"{axis}, but device matrix {_short(dev)} has axes {valid} (and -1 for not split)")
    size = raw.opt_weight_shard_size
    if size < -1:
        raise StrategyError(f"{where}: opt_weight_shard_size {size} is invalid (-1, 0 or a group size)")


def check_bounds(strategy: StrategyFile) -> None:
    """Refuse a strategy whose numbers cannot describe a real job; see the module notes for the limits.

    Raises StrategyError naming the file and parameter. Only arithmetic on the parsed integers: nothing
    is allocated in proportion to a device count.
    """
    for name, raw in strategy.layouts:
        _check_layout(strategy, name, raw)
    if not strategy.layouts:
        return
    lmap = layout_map(strategy)
    first = next(iter(lmap.values()))
    per_stage = _bounded_product(first.dev_matrix) if first.dev_matrix else 1
    stages = {s for layout in lmap.values() for s in layout.stages}
    highest = max(stages | {strategy.stage})
    if per_stage * (highest + 1) > MAX_DEVICES:
        raise StrategyError(f"{_where(strategy)}: pipeline stage {highest} of {per_stage} device(s) each puts "
                            f"ranks beyond mpitrans' limit of {MAX_DEVICES} devices (2^20)")
