"""Drop-in replacements for MindSpore's checkpoint-transformation functions.

Same names, arguments and output files as `mindspore.transform_checkpoints`,
`mindspore.transform_checkpoint_by_rank`, `mindspore.rank_list_for_transform` and
`mindspore.merge_pipeline_strategys`, but tensors are streamed byte range by byte range instead of
loading whole checkpoints, dtypes are never converted, and mindspore is not imported. They run in the
calling process alone; use `mpitrans.transform` (or `python -m mpitrans` under mpirun) to spread the work.
"""

from __future__ import annotations

import os
import socket

from mpitrans import API_FUNCTIONS, strategy
from mpitrans.errors import MpitransError, UnsupportedError
from mpitrans.job.rounds import Moves, execute
from mpitrans.job.run import transform
from mpitrans.job.summary import RankStats, Summary
from mpitrans.job.transport import LocalTransport
from mpitrans.plan.planner import Planner, rank_list_for_strategies
from mpitrans.storage.formats import FORMATS, open_source
from mpitrans.strategy.merge import merge_pipeline_strategys as merge_pipeline_strategys

__all__ = list(API_FUNCTIONS)


def transform_checkpoints(
    src_checkpoints_dir: str,
    dst_checkpoints_dir: str,
    ckpt_prefix: str,
    src_strategy_file: str | None = None,
    dst_strategy_file: str | None = None,
    process_num: int = 1,
    output_format: str = "ckpt",
) -> Summary:
    """Reshard every target rank into `dst_checkpoints_dir/rank_x/{ckpt_prefix}x.{output_format}` in this
    process, from `.ckpt` or `.safetensors` sources (MindSpore refuses `.ckpt` -> safetensors; we do not).

    `process_num` is accepted for MindSpore compatibility and ignored: parallelism comes from mpirun."""
    if output_format not in FORMATS:
        raise UnsupportedError(f"output_format {output_format!r}: mpitrans writes {' or '.join(FORMATS)}")
    if not os.path.isdir(src_checkpoints_dir):
        raise MpitransError(f"src_checkpoints_dir {src_checkpoints_dir} is not a directory")
    # Exactly MindSpore's outputs: no manifest beside them; existing files are replaced, as MindSpore's
    # save_checkpoint replaces them (mpitrans.transform itself refuses unless overwrite=True).
    return transform(src_checkpoints_dir, dst_checkpoints_dir, src_strategy_file, dst_strategy_file,
                     prefix=ckpt_prefix, comm=LocalTransport(), overwrite=True, write_manifest=False,
                     strict=False, output_format=output_format)


def unified_safetensors(
    src_dir: str,
    src_strategy_file: str,
    dst_dir: str,
    merge_with_redundancy: bool = True,
    file_suffix: str | None = None,
    max_process_num: int = 64,
    choice_func: object = None,
    **unsupported: object,
) -> Summary:
    """MindSpore's `unified_safetensors` in this process: the distributed checkpoint in `src_dir` as one
    full model in `dst_dir` (partN.safetensors, hyper_param.safetensors, param_name_map.json), the same
    files MindSpore writes. Under mpirun, `mpitrans.transform(..., output_format="unified-safetensors")`
    writes the part files in parallel.

    `choice_func` may return True/False (renaming is not supported); `max_process_num` is ignored
    (parallelism comes from mpirun); `merge_with_redundancy` changes nothing here (every parameter is
    read from whichever source holds it); MindSpore's `split_dst_file` (splitting the work by hand) is
    refused when given: run one job under mpirun instead."""
    del max_process_num, merge_with_redundancy
    if any(k != "split_dst_file" for k in unsupported):
        raise TypeError(f"unified_safetensors() got unexpected arguments {sorted(unsupported)}")
    if unsupported.get("split_dst_file"):
        raise UnsupportedError("unified_safetensors: split_dst_file is not supported; run one job under mpirun")
    if os.path.isfile(src_dir):
        raise MpitransError(f"unified_safetensors: src_dir {src_dir} is a file; give the directory of rank_x folders")
    return transform(src_dir, dst_dir, src_strategy_file, None, comm=LocalTransport(), overwrite=True,
                     write_manifest=False, strict=False, output_format="unified-safetensors",
                     src_postfix=file_suffix, choice_func=choice_func)


def rank_list_for_transform(
    rank_id: int, src_strategy_file: str | None = None, dst_strategy_file: str | None = None
) -> list[int]:
    """Source ranks whose checkpoints MindSpore reads to build target `rank_id`, highest first."""
    if not isinstance(rank_id, int):
        raise TypeError("rank_id must be an int")
    if src_strategy_file is None:
        return [0]
    src = strategy.load(src_strategy_file)
    dst = strategy.load(dst_strategy_file) if dst_strategy_file is not None else None
    return rank_list_for_strategies(rank_id, src, dst)


def transform_checkpoint_by_rank(
    rank_id: int,
    checkpoint_files_map: dict[int, str],
    save_checkpoint_file_name: str,
    src_strategy_file: str | None = None,
    dst_strategy_file: str | None = None,
) -> None:
    """Build target `rank_id` from the given source files (rank -> path) into one file."""
    if not isinstance(checkpoint_files_map, dict):
        raise TypeError("checkpoint_files_map must be a dict of rank -> checkpoint file")
    if not str(save_checkpoint_file_name).endswith(".ckpt"):
        raise MpitransError(f"save_checkpoint_file_name {save_checkpoint_file_name} must end with .ckpt")
    for rank, path in checkpoint_files_map.items():
        if not os.path.exists(path):
            raise MpitransError(f"checkpoint file {path} of source rank {rank} does not exist")
    src = strategy.load(src_strategy_file) if src_strategy_file is not None else None
    dst = strategy.load(dst_strategy_file) if dst_strategy_file is not None else None
    paths = {int(r): os.path.abspath(p) for r, p in checkpoint_files_map.items()}
    metas = {}
    for r, p in paths.items():
        reader = open_source(p)
        metas[r] = reader.tensors()
        reader.close()
    planner = Planner(src, dst, metas)
    plan = planner.plan(rank_id, load_order=list(paths))
    stats = RankStats(0, socket.gethostname())
    out = os.path.abspath(save_checkpoint_file_name)
    seers = {r: [0] for r in paths}
    moves = Moves({rank_id: plan}, seers, paths, metas, {})
    execute(LocalTransport(), moves, lambda _t: out, 1 << 28, stats)


# MindSpore 2.10's newer names for the same functions (`mindspore.parallel.checkpoint_convert`): same
# signatures, same outputs.
convert_checkpoints = transform_checkpoints
convert_checkpoint_by_rank = transform_checkpoint_by_rank
rank_list_for_convert = rank_list_for_transform


def ckpt_to_safetensors(file_path: str, save_path: str | None = None, name_map: dict | None = None,
                        file_name_regex: str | None = None, processes_num: int = 1, *, comm: object = None) -> None:
    """MindSpore's `ckpt_to_safetensors`: every `.ckpt` of `file_path` (one file, or its `rank*` folders)
    as a `.safetensors` byte-identical to MindSpore's, streamed. Collective over `comm` (default:
    COMM_WORLD under mpirun, else this process): the files are spread over the processes, so
    `processes_num` is accepted and ignored."""
    _convert(file_path, save_path, name_map, file_name_regex, (".ckpt", ".safetensors"), comm)


def safetensors_to_ckpt(file_path: str, save_path: str | None = None, name_map: dict | None = None,
                        file_name_regex: str | None = None, processes_num: int = 1, *, comm: object = None) -> None:
    """MindSpore's `safetensors_to_ckpt`, the other way round (see `ckpt_to_safetensors`)."""
    _convert(file_path, save_path, name_map, file_name_regex, (".safetensors", ".ckpt"), comm)


def _convert(file_path: str, save_path: str | None, name_map: dict | None, regex: str | None,
             suffixes: tuple[str, str], comm: object) -> None:
    """Rank 0's file list is everyone's; each process converts every size-th file; all raise the first
    error any of them hit, so no process returns while another is failing."""
    from mpitrans.job.agree import agree
    from mpitrans.job.transport import make_transport
    from mpitrans.storage.convert import conversion_tasks, run_tasks

    if name_map is not None and not isinstance(name_map, dict):
        raise MpitransError(f"name_map must be a dict of old name -> new name, got {type(name_map).__name__}")
    t = make_transport(comm)
    tasks = agree(t, lambda: conversion_tasks(file_path, save_path, *suffixes, regex))

    def mine() -> None:
        err = run_tasks(tasks, range(t.rank, len(tasks), t.size), name_map)
        if err:
            raise MpitransError(err)

    agree(t, mine)
