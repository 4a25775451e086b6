"""mpitrans: reshard MindSpore distributed checkpoints with MPI, byte-identical to MindSpore.

Importing this package is cheap: it never imports mindspore, and mpi4py only when a job starts.
"""

from __future__ import annotations

__version__ = "0.1.0"

# The MindSpore-named functions of `mpitrans.api`, loaded on first use.
API_FUNCTIONS = (
    "ckpt_to_safetensors", "convert_checkpoint_by_rank", "convert_checkpoints", "merge_pipeline_strategys",
    "rank_list_for_convert", "rank_list_for_transform", "safetensors_to_ckpt", "transform_checkpoint_by_rank",
    "transform_checkpoints", "unified_safetensors",
)
__all__ = ["__version__", "transform", *API_FUNCTIONS]


def __getattr__(name: str):
    # Lazy, so `python -m mpitrans --help` and `import mpitrans` stay fast.
    if name == "transform":
        from mpitrans.job.run import transform

        return transform
    if name in API_FUNCTIONS:
        from mpitrans import api

        return getattr(api, name)
    raise AttributeError(f"module 'mpitrans' has no attribute {name!r}")
