"""Shared fixtures: the quickstart example model, with MindSpore's own shards and expected output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def example(tmp_path_factory) -> Path:
    """The quickstart model: sources derived by MindSpore, expected output computed by MindSpore."""
    root = tmp_path_factory.mktemp("example")
    env = dict(os.environ, GLOG_v="3")
    code = f"""
import mindspore as ms, os, shutil
from mpitrans.example import build
root = {str(root)!r}
build(root)
os.makedirs(root + "/full_dir/rank_0")
shutil.copy(root + "/full/model.ckpt", root + "/full_dir/rank_0/model.ckpt")
ms.transform_checkpoints(root + "/full_dir", root + "/src", "model_", None, root + "/src_strategy.ckpt")
ms.transform_checkpoints(root + "/src", root + "/expected", "checkpoint_", root + "/src_strategy.ckpt",
                         root + "/dst_strategy.ckpt")
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return root


