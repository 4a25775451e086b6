"""ckpt <-> safetensors without resharding, against MindSpore's `ckpt_to_safetensors` / `safetensors_to_ckpt`
(byte for byte, `name_map` included), under mpirun too; bfloat16 bit-exact through both directions; and a
bad safetensors source refused end to end with nothing written."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import mpitrans
from mpitrans.errors import MpitransError
from tests.support.layouts import MODEL, Case, dp_mp
from tests.support.mpirun import mpirun_script, single
from tests.support.oracle import assert_same_tree, build_cases, read_checkpoint

ms = pytest.importorskip("mindspore")

M = tuple(replace(p, dtype="float32") if p.dtype == "bfloat16" else p for p in MODEL)
NAME_MAP = {"layer0.weight": "blocks.0.w", "head.weight": "lm_head.weight"}


@pytest.fixture(scope="module")
def shards():
    """(no-bfloat16 dp2mp2 shards, bfloat16 dp2mp2 shards with their MindSpore .ckpt reshard to dp1mp4)."""
    plain, bf16 = Case(M, dp_mp(2, 2, M), dp_mp(1, 4, M)), Case(MODEL, dp_mp(2, 2, MODEL), dp_mp(1, 4, MODEL))
    object.__setattr__(plain, "label", "convert_plain")
    object.__setattr__(bf16, "label", "convert_bf16")
    return build_cases([plain, bf16])


@pytest.mark.parametrize("name_map", [None, NAME_MAP])
def test_conversions_match_mindspore(shards, tmp_path, name_map):
    src = str(shards[0].src_dir)
    ms.ckpt_to_safetensors(src, str(tmp_path / "ms_st"), name_map)
    mpitrans.ckpt_to_safetensors(src, str(tmp_path / "our_st"), name_map)
    assert_same_tree(tmp_path / "ms_st", tmp_path / "our_st")
    ms.safetensors_to_ckpt(str(tmp_path / "ms_st"), str(tmp_path / "ms_ck"), name_map and {"blocks.0.w": "x"})
    mpitrans.safetensors_to_ckpt(str(tmp_path / "ms_st"), str(tmp_path / "our_ck"), name_map and {"blocks.0.w": "x"})
    assert_same_tree(tmp_path / "ms_ck", tmp_path / "our_ck")
    one = next((tmp_path / "ms_st").rglob("*.safetensors"))
    ms.safetensors_to_ckpt(str(one), str(tmp_path / "ms_one"))
    mpitrans.safetensors_to_ckpt(str(one), str(tmp_path / "our_one"))
    assert_same_tree(tmp_path / "ms_one", tmp_path / "our_one")


def test_conversion_under_mpirun(shards, tmp_path):
    script = tmp_path / "conv.py"
    script.write_text(f"import mpitrans\nmpitrans.ckpt_to_safetensors({str(shards[0].src_dir)!r}, "
                      f"{str(tmp_path / 'ours')!r}, {NAME_MAP!r})\n")
    proc = mpirun_script(3, [str(script)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ms.ckpt_to_safetensors(str(shards[0].src_dir), str(tmp_path / "theirs"), NAME_MAP)
    assert_same_tree(tmp_path / "theirs", tmp_path / "ours")


def test_bfloat16_stays_bit_exact_through_safetensors(shards, tmp_path):
    """MindSpore cannot write bfloat16 safetensors here (numpy), so the oracle is its `.ckpt` reshard:
    .ckpt -> safetensors (ours) -> reshard to safetensors and to .ckpt -> the same tensors, bit for bit."""
    files = shards[1]
    mpitrans.ckpt_to_safetensors(str(files.src_dir), str(tmp_path / "st"))
    header = (tmp_path / "st" / "rank_0" / "checkpoint_0.safetensors").read_bytes()[8:2000]
    assert b'"dtype":"BF16"' in header
    want = {rel: {r.name: (r.dims, r.data) for r in read_checkpoint(files.expected_dir / rel)}
            for rel in files.expected_files}
    for fmt in ("ckpt", "safetensors"):
        out = tmp_path / f"out_{fmt}"
        mpitrans.transform_checkpoints(str(tmp_path / "st"), str(out), "checkpoint_", str(files.src_strategy),
                                       str(files.dst_strategy), output_format=fmt)
        if fmt == "safetensors":
            mpitrans.safetensors_to_ckpt(str(out), str(tmp_path / "back"))
            out = tmp_path / "back"
        for rel, tensors in want.items():
            got = {r.name: (r.dims, r.data) for r in read_checkpoint(out / rel)}
            assert got == tensors, (fmt, rel)


def test_bad_safetensors_source_is_one_error_and_nothing_written(shards, tmp_path):
    src = tmp_path / "src"
    mpitrans.ckpt_to_safetensors(str(shards[0].src_dir), str(src))
    victim = src / "rank_2" / "checkpoint_2.safetensors"
    blob = bytearray(victim.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["layer1.weight"]["dtype"] = "F64"  # a header that lies about a dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    victim.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n:])
    out = tmp_path / "out"
    args = ["--src-checkpoint", str(src), "--src-strategy", str(shards[0].src_strategy), "--dst-checkpoint",
            str(out), "--dst-strategy", str(shards[0].dst_strategy), "--output-format", "SafeTensors"]
    proc = single(args)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpitrans: error")]
    assert len(lines) == 1 and "checkpoint_2.safetensors: tensor 'layer1.weight': the header says F64" in lines[0]
    assert not out.exists() or not any(out.rglob("*.safetensors"))
    with pytest.raises(MpitransError, match="header says F64"):
        mpitrans.transform_checkpoints(str(src), str(out), "checkpoint_", str(shards[0].src_strategy),
                                       str(shards[0].dst_strategy), output_format="safetensors")
    victim.write_bytes(bytes(blob[:8 + n + 10]))  # truncated: offsets past the end
    proc = single(args)
    assert proc.returncode == 1 and "run past the end of the data" in proc.stderr
    assert not any(out.rglob("*.safetensors"))


def test_cli_writes_safetensors(shards, tmp_path):
    out = tmp_path / "out"
    proc = single(["--src-checkpoint", str(shards[0].src_dir), "--src-strategy", str(shards[0].src_strategy),
                   "--dst-checkpoint", str(out), "--dst-strategy", str(shards[0].dst_strategy),
                   "--output-format", "safetensors", "--quiet"])
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "mpitrans_manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"].values()) == [
        f"rank_{r}/checkpoint_{r}.safetensors" for r in range(4)]
    (out / "mpitrans_manifest.json").unlink()
    ms.ckpt_to_safetensors(str(shards[0].expected_dir), str(tmp_path / "expected"))
    assert_same_tree(tmp_path / "expected", out)
