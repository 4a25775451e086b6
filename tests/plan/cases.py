"""Random resharding cases as the planner sees them: mpitrans strategies and synthesized source metadata
(no files, no MindSpore), built from `tests.support.layouts.random_case`."""

from __future__ import annotations

from mpitrans.metadata import TensorMeta
from mpitrans.plan.layout import box_shape, device_box, flatten_layout
from mpitrans.strategy.model import RawLayout, StrategyFile
from tests.support.layouts import Case, LayoutSpec


def _raw(layout) -> RawLayout:
    """A test layout as a strategy file stores it (one TensorMap message per dimension when multi-axis)."""
    tmap = layout.tensor_map
    if any(isinstance(e, tuple) for e in tmap):
        messages = tuple(e if isinstance(e, tuple) else (e,) for e in tmap) + (((),) if len(tmap) == 1 else ())
    else:
        messages = (tuple(tmap),)
    return RawLayout(layout.dev_matrix, messages, opt_weight_shard_step=layout.opt_shard_step,
                     opt_weight_shard_size=layout.opt_shard_size)


def strategy_file(spec: LayoutSpec, stage: int | None = None) -> StrategyFile:
    """The side's strategy: merged over stages (names `"{stage}-"` prefixed), or one stage's own file."""
    merged = spec.num_stages > 1 and stage is None
    stages = range(spec.num_stages) if stage is None else [stage]
    layouts = [(f"{s}-{n}" if merged else n, _raw(lay)) for s in stages for n, lay in spec.stages[s]]
    items = [("Default/network-Net/MatMul-op0", s, ((1,),)) for s in stages]
    return StrategyFile(layouts=layouts, strategy_items=items, current_stage=1 if merged else 0)


def source_metas(case: Case) -> dict[int, list[TensorMeta]]:
    """Each source file's tensors, in the checkpoint's parameter order, with the shapes training writes."""
    if case.src is None:
        return {0: [TensorMeta(p.name, p.dtype, p.shape) for p in case.params]}
    known = case.src.names()
    n = case.src.stage_device_num
    out = {}
    for g in range(case.src.device_num):
        own = case.src.stage_layouts(g // n)
        metas = []
        for p in case.params:
            if p.name in own:
                lay = own[p.name]
                flat = flatten_layout(lay.to_param_layout(), p.shape)
                metas.append(TensorMeta(p.name, p.dtype, box_shape(device_box(flat, g % n))))
            elif p.name not in known:
                metas.append(TensorMeta(p.name, p.dtype, p.shape))
        out[g] = metas
    return out



def sides(case: Case) -> tuple[StrategyFile | None, StrategyFile | None]:
    """The case's source strategy (one stage's own file for the `_part` path) and destination strategy."""
    src = None if case.src is None else strategy_file(case.src, case.src_stage)
    dst = None if case.dst is None else strategy_file(case.dst)
    return src, dst


def shared_lists(metas: dict[int, list[TensorMeta]]) -> dict[int, list[TensorMeta]]:
    """Files with equal metadata share one list object, as a compact metadata exchange delivers them."""
    first: dict[tuple, list[TensorMeta]] = {}
    return {g: first.setdefault(tuple(ms), ms) for g, ms in metas.items()}
