"""The unified safetensors store's rules against MindSpore's own functions (dealing parameters to part
files, the file count, `param_name_map.json`), and its reader: boxes read from the file the map names,
bad maps refused as one error naming the map and the file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpitrans.errors import CheckpointFormatError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.discover import discover_sources
from mpitrans.storage.formats import format_of_path, open_source
from mpitrans.storage.safetensors import SafetensorsTarget
from mpitrans.storage.unified import MINDSPORE_FILE_BYTES, UnifiedSource, deal, file_count, map_document

ts = pytest.importorskip("mindspore.parallel.transform_safetensors")

SIZES = st.lists(st.integers(0, 1 << 12), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(SIZES, st.integers(1, 8))
def test_deal_is_mindspores(sizes, count):
    named = [(f"p{i}", s) for i, s in enumerate(sizes)]
    count = min(count, len(named))
    assert deal(named, count) == ts._split_weight_dict(dict(named), count)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5 * MINDSPORE_FILE_BYTES), min_size=1, max_size=8))
def test_file_count_is_mindspores(sizes):
    expected = min(math.ceil(sum(sizes) / 1024 / 1024 / 1024 / 3), len(sizes))
    assert file_count(sizes) == max(1, expected)
    assert file_count(sizes, 3) == min(3, len(sizes))


def test_map_document_is_mindspores(tmp_path):
    groups = [["b", "a"], ["c"], ["d", "e", "f"]]
    ts._save_parameter_map_json(groups, None, (), str(tmp_path), 1234)
    assert map_document(groups, 1234) == (tmp_path / "param_name_map.json").read_bytes()


def _store(root, parts: dict[str, dict[str, np.ndarray]], hyper: dict[str, np.ndarray] | None = None):
    """A store written with our safetensors writer: the map plus each part's tensors."""
    root.mkdir(parents=True, exist_ok=True)
    files = dict(parts)
    if hyper:
        files["hyper_param.safetensors"] = hyper
    for file, arrays in files.items():
        w = SafetensorsTarget(str(root / file), [TensorMeta(n, str(a.dtype), a.shape) for n, a in arrays.items()])
        for a in arrays.values():
            w.write(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
        w.commit()
    weight_map = {n: file for file, arrays in parts.items() for n in arrays}
    (root / "param_name_map.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return root / "param_name_map.json"


def _arrays(seed: int):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((6, 5)).astype("float32"), "b": rng.integers(0, 9, (7,)).astype("int8")}


def test_reader_reads_every_box_from_its_file(tmp_path):
    a, b = _arrays(0), _arrays(1)
    path = _store(tmp_path / "s", {"part0.safetensors": a, "part1.safetensors": {"v." + k: v for k, v in b.items()}},
                  hyper={"global_step": np.array([7], dtype="int32")})
    assert discover_sources(str(tmp_path / "s")) == {0: str(path)}
    assert format_of_path(str(path)).name == "unified-safetensors"
    src = open_source(str(path))
    names = {t.name for t in src.tensors()}
    assert names == {"w", "b", "v.w", "v.b", "global_step"}
    out = bytearray(2 * 3 * 4)
    src.read_box("v.w", ((1, 3), (2, 5)), memoryview(out))
    assert bytes(out) == b["w"][1:3, 2:5].tobytes()
    again = UnifiedSource(str(path), src.export_index())  # a peer's copy reads the same bytes
    out2 = bytearray(4)
    again.read_box("global_step", ((0, 1),), memoryview(out2))
    assert bytes(out2) == np.array([7], dtype="int32").tobytes()
    src.close()
    again.close()


def test_missing_file_is_one_error_naming_both(tmp_path):
    path = _store(tmp_path / "s", {"part0.safetensors": _arrays(0), "part1.safetensors": {"x": np.zeros(3, "f4")}})
    (tmp_path / "s" / "part1.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match=r"param_name_map\.json: parameter 'x' is mapped to "
                                                     r"part1\.safetensors, which is missing"):
        open_source(str(path))


@pytest.mark.parametrize("doc, why", [
    ({"weight_map": {"w": "../elsewhere.safetensors"}}, "not a file of this folder"),
    ({"weight_map": {"w": 3}}, "must map parameter names"),
    ("[1, 2", "cannot read"),
])
def test_bad_maps(tmp_path, doc, why):
    path = tmp_path / "param_name_map.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(CheckpointFormatError, match=why):
        open_source(str(path))


def test_a_parameter_in_two_files_is_refused(tmp_path):
    path = _store(tmp_path / "s", {"part0.safetensors": _arrays(0), "part1.safetensors": {"w": np.zeros(3, "f4")}})
    with pytest.raises(CheckpointFormatError, match="'w' is in both"):
        open_source(str(path))
