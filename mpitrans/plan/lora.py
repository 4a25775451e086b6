"""LoRA merge: which parameters are LoRA factors, which weight each pair updates, and the scaling.

MindFormers' `transform_ckpt_lora.py` merges a fine-tuned model after a full-checkpoint merge: for every
name containing `lora_a` or `lora_A` (Adam's `adam_m.`/`adam_v.` copies excepted) it finds the weight and
the `B` factor by fixed string rewrites, replaces the weight by `W + (B @ A) * scaling` and leaves every
name containing `lora_` out of the result. mpitrans applies the same naming rules inside the reshard:
the planner gives each target shard of `W` the slices of `B` and `A` it needs as auxiliary tensors
(never written), and the writer merges them tile by tile (`job/lora.py`).

Pure functions of parameter names and shapes; no arithmetic here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from mpitrans.errors import MpitransError

# Optimizer copies of a factor that MindFormers skips when it looks for pairs (it drops them with every
# other `lora_` name).
_SKIPPED_STATES = ("adam_m", "adam_v")
# Weight dtypes the merge can compute on (float32 arithmetic, rounded once to the weight's type).
MERGEABLE = ("float16", "bfloat16", "float32")
# Roles of the auxiliary tensors that carry a weight's factor slices to its writer.
ROLE_B, ROLE_A = "lora_b", "lora_a"


def parse_scaling(value: object) -> float:
    """`--lora-scaling`: a number (`2`, `0.5`) or `alpha/rank` as a fraction (`16/8`), as MindFormers users
    write it; refused with the accepted forms otherwise (a typo must not merge with a wrong factor)."""
    if isinstance(value, bool):
        raise MpitransError(f"--lora-scaling {value!r}: give a number such as 2 or alpha/rank such as 16/8")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        num, _, den = text.partition("/")
        result = Fraction(num.strip()) / Fraction(den.strip()) if den else Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise MpitransError(f"--lora-scaling {text!r}: give a number such as 2 or alpha/rank such as 16/8 "
                            f"(a non-zero rank)") from None
    return float(result)


def is_lora(name: str) -> bool:
    """MindFormers leaves every name containing `lora_` out of the merged model: the factors, their
    optimizer states and any other LoRA bookkeeping."""
    return "lora_" in name


def weight_of(a_name: str) -> str:
    """The weight an `A` factor updates, by MindFormers' rewrites (`x.mindpet_delta_lora_a` -> `x.weight`,
    `x_lora_a` -> `x`, `x.lora_A.weight` -> `x.weight`)."""
    return a_name.replace("_lora_a", "").replace("mindpet_delta", "weight").replace(".lora_A", "")


def b_of(a_name: str) -> str:
    """The `B` factor paired with an `A` factor, by MindFormers' rewrite."""
    return a_name.replace("lora_a", "lora_b").replace(".lora_A", ".lora_B")


@dataclass(frozen=True)
class LoraPair:
    weight: str
    b: str  # [out, r]
    a: str  # [r, in]


@dataclass(frozen=True)
class LoraMerge:
    """`--lora-merge`: merge every pair with this scaling (MindFormers' default is 1)."""

    scaling: float = 1.0

    def pairs(self, names: Iterable[str]) -> dict[str, LoraPair]:
        """weight name -> its pair, for every `A` factor among `names`; an `A` whose weight or `B` is
        absent is an error naming both (MindFormers stops there too)."""
        names = list(names)
        present = set(names)
        out: dict[str, LoraPair] = {}
        for name in names:
            if not ("lora_a" in name or "lora_A" in name) or name.split(".")[0] in _SKIPPED_STATES:
                continue
            pair = LoraPair(weight_of(name), b_of(name), name)
            for needed, what in ((pair.weight, "weight"), (pair.b, "B factor")):
                if needed not in present or needed == name:
                    raise MpitransError(f"LoRA merge: the {what} of parameter {name!r} would be {needed!r}, which "
                                        f"is not in the source checkpoints (names are paired as MindFormers' "
                                        f"transform_ckpt_lora.py pairs them)")
            if pair.weight in out:
                raise MpitransError(f"LoRA merge: parameters {out[pair.weight].a!r} and {name!r} both update "
                                    f"{pair.weight!r}")
            out[pair.weight] = pair
        if names and not out:  # (a process that plans no target sees no names)
            raise MpitransError("--lora-merge: the source checkpoints hold no LoRA factor (no parameter name "
                                "contains lora_a, lora_A or mindpet_delta_lora_a)")
        return out


def check_shapes(pair: LoraPair, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str],
                 where: str) -> None:
    """W [out, in], B [out, r], A [r, in] in the full model, with floating types; `where` names the file."""
    w, b, a = (tuple(shapes[n]) for n in (pair.weight, pair.b, pair.a))
    fits = len(w) == len(b) == len(a) == 2 and b[0] == w[0] and a[1] == w[1] and b[1] == a[0]
    if not fits:
        raise MpitransError(f"LoRA merge of parameter {pair.weight!r} {list(w)} ({where}): factors {pair.b!r} "
                            f"{list(b)} and {pair.a!r} {list(a)} do not fit; expected B [out, r] and A [r, in] "
                            f"for W [out, in]")
    for n in (pair.weight, pair.b, pair.a):
        if dtypes[n] not in MERGEABLE:
            raise MpitransError(f"LoRA merge of parameter {pair.weight!r} ({where}): {n!r} has type {dtypes[n]}; "
                                f"the merge computes on floating-point tensors only")
