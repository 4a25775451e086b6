"""Which parameters a conversion keeps: `--include` / `--exclude` globs, name prefixes
(MindFormers' `filter_out_param_prefix`) and `--drop-optimizer-state`.

A pure predicate on parameter names. The planner applies it to the source parameter list before
planning, so an excluded tensor is in no target plan: its bytes are never read, sent or written. The
strategies and the consistency checks still see every parameter (the files are what they are).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from mpitrans.errors import MpitransError

# `--drop-optimizer-state`: what MindFormers users filter out before deployment. Optimizer states are
# the copies of each weight that Adam (`adam_m.`, `adam_v.`) and gradient accumulation (`accu_grads.`)
# keep; the scalars are the training-loop state MindSpore/MindFormers save beside the weights (the
# GLM walk-through's merge lists them: "The parameter ... is not in src_strategy").
OPTIMIZER_STATE_PREFIXES = ("adam_m.", "adam_v.", "accu_grads.")
TRAINING_SCALARS = (
    "global_step", "learning_rate", "beta1_power", "beta2_power", "scale_sense", "loss_scale",
    "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num",
)


def split_patterns(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Repeated or comma-separated values (`--exclude 'a*' --exclude 'b*,c*'`) -> ('a*', 'b*', 'c*')."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        out += [p.strip() for p in str(v).split(",") if p.strip()]
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class ParamFilter:
    """`keeps(name)`: in `include` (when given), and not excluded by a glob, a prefix or the optimizer-state
    list. Globs are case-sensitive `fnmatch` patterns on the whole name (`*` crosses dots)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_prefix: tuple[str, ...] = ()
    drop_optimizer_state: bool = False

    @classmethod
    def build(cls, include: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None,
              exclude_prefix: Iterable[str] | str | None = None,
              drop_optimizer_state: bool = False) -> ParamFilter:
        return cls(split_patterns(include), split_patterns(exclude), split_patterns(exclude_prefix),
                   bool(drop_optimizer_state))

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.exclude_prefix or self.drop_optimizer_state)

    def keeps(self, name: str) -> bool:
        if self.include and not any(fnmatchcase(name, p) for p in self.include):
            return False
        if any(fnmatchcase(name, p) for p in self.exclude) or name.startswith(self.exclude_prefix):
            return False
        if self.drop_optimizer_state:
            return not (name.startswith(OPTIMIZER_STATE_PREFIXES) or name in TRAINING_SCALARS)
        return True

    def apply(self, names: Iterable[str]) -> list[str]:
        """The kept names, in order; an error when the filters keep nothing (surely a typo)."""
        names = list(names)
        kept = [n for n in names if self.keeps(n)]
        if names and not kept:
            raise MpitransError(f"the parameter filters ({self.describe()}) leave none of the "
                                f"{len(names)} source parameters (e.g. {names[0]!r})")
        return kept

    def describe(self) -> str:
        parts = [f"--include {p}" for p in self.include] + [f"--exclude {p}" for p in self.exclude]
        parts += [f"--filter-out-param-prefix {p}" for p in self.exclude_prefix]
        if self.drop_optimizer_state:
            parts.append("--drop-optimizer-state")
        return " ".join(parts) or "none"


KEEP_ALL = ParamFilter()
