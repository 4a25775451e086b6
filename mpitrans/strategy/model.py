"""In-memory form of a parallel strategy, independent of the file format it came from.

`StrategyFile` keeps the entries exactly as a file lists them (names may carry a `"{stage}-"` prefix after
a pipeline merge) because MindSpore's choice of layout for a parameter shared by several stages depends on
that order and on the rank asking. `ParamLayout` is the per-parameter view the planner works with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TensorMapEntry = int | tuple[int, ...]


@dataclass(frozen=True)
class RawLayout:
    """One `ParallelLayouts` message, fields as stored."""

    dev_matrix: tuple[int, ...]
    # One tuple per TensorMap message. Classic layouts have a single message holding one int per tensor
    # dimension; the newer Layout API writes one message per tensor dimension (multi-axis entries).
    tensor_map: tuple[tuple[int, ...], ...]
    param_split_shape: tuple[int, ...] = ()
    indices_offset: tuple[int, ...] = ()
    field: int = 0
    opt_weight_shard_step: int = 0
    opt_weight_shard_size: int = 0
    # MindSpore always writes exactly one DevMatrix, ParamSplitShape and IndicesOffset message per layout,
    # and the three fields above hold that message. A file with none or several of them is still possible
    # on the wire; MindSpore then uses the first one or fails when the layout is used. To judge and rewrite
    # such a file the same way, these keep the complete message lists; None means "exactly one message".
    all_dev_matrices: tuple[tuple[int, ...], ...] | None = None
    all_param_split_shapes: tuple[tuple[int, ...], ...] | None = None
    all_indices_offsets: tuple[tuple[int, ...], ...] | None = None

    def dev_matrix_messages(self) -> tuple[tuple[int, ...], ...]:
        """Every DevMatrix message, in file order (normally just `(dev_matrix,)`)."""
        return (self.dev_matrix,) if self.all_dev_matrices is None else self.all_dev_matrices

    def param_split_shape_messages(self) -> tuple[tuple[int, ...], ...]:
        """Every ParamSplitShape message, in file order (normally just `(param_split_shape,)`)."""
        if self.all_param_split_shapes is None:
            return (self.param_split_shape,)
        return self.all_param_split_shapes

    def indices_offset_messages(self) -> tuple[tuple[int, ...], ...]:
        """Every IndicesOffset message, in file order (normally just `(indices_offset,)`)."""
        return (self.indices_offset,) if self.all_indices_offsets is None else self.all_indices_offsets


@dataclass
class StrategyFile:
    """A parsed strategy file (protobuf or JSON) or an in-memory merge of per-stage files."""

    # (param_name as in the file, layout), in file order.
    layouts: list[tuple[str, RawLayout]] = field(default_factory=list)
    # (node_name, stage, [strategy dims...]) from parallel_strategy_item, in file order; kept so a merged
    # file can be written back.
    strategy_items: list[tuple[str, int, tuple[tuple[int, ...], ...]]] = field(default_factory=list)
    current_stage: int = 0
    # Where it came from, for error messages.
    source: str = ""

    @property
    def stage(self) -> int:
        """Pipeline stage of a single-stage file: the stage of its first strategy item (MindSpore's rule)."""
        return self.strategy_items[0][1] if self.strategy_items else 0


@dataclass(frozen=True)
class ParamLayout:
    """A parameter's layout as MindSpore's `_convert_to_list` sees it, pipeline stages resolved."""

    dev_matrix: tuple[int, ...]
    tensor_map: tuple[TensorMapEntry, ...]
    param_split_shape: tuple[int, ...]
    field: int
    opt_shard_step: int
    opt_shard_size: int
    stages: tuple[int, ...]
