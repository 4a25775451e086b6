"""`verify` and the manifest: a missing manifest is said, an unreadable one is a failure naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mpitrans
from mpitrans.job.verify import format_results, verify
from tests.support.mpirun import mpirun, python_m


def _paths(example: Path) -> tuple[str, str, str]:
    return str(example / "src"), str(example / "src_strategy.ckpt"), str(example / "dst_strategy.ckpt")


@pytest.fixture(scope="module")
def output(example, tmp_path_factory) -> Path:
    src, src_strategy, dst_strategy = _paths(example)
    dst = tmp_path_factory.mktemp("verify") / "dst"
    mpitrans.transform(src, str(dst), src_strategy, dst_strategy)
    return dst


def _verify_args(example: Path, dst: Path) -> list[str]:
    src, src_strategy, dst_strategy = _paths(example)
    return ["verify", "--src-checkpoint", src, "--src-strategy", src_strategy, "--dst-checkpoint", str(dst),
            "--dst-strategy", dst_strategy]


def _with_manifest(output: Path, tmp_path: Path, text: str | None) -> Path:
    """A copy of the output whose manifest is `text` (None: no manifest)."""
    import shutil

    dst = tmp_path / "dst"
    shutil.copytree(output, dst)
    manifest = dst / "mpitrans_manifest.json"
    if text is None:
        manifest.unlink()
    else:
        manifest.write_text(text)
    return dst


def test_intact_output_passes_without_a_note(example, output):
    src, src_strategy, dst_strategy = _paths(example)
    results = verify(src, str(output), src_strategy, dst_strategy)
    assert all(r.ok and not r.note for r in results) and len(results) == 4
    assert "note" not in format_results(results)


def test_missing_manifest_is_noted(example, output, tmp_path):
    dst = _with_manifest(output, tmp_path, None)
    src, src_strategy, dst_strategy = _paths(example)
    results = verify(src, str(dst), src_strategy, dst_strategy)
    assert all(r.ok for r in results)
    text = format_results(results)
    assert text.startswith("verify: all 4 target files match")
    assert f"verify: note: no manifest {dst / 'mpitrans_manifest.json'}: compared with the sources only" in text


@pytest.mark.parametrize(("text", "why"), [
    ("{ this is not json", "is not valid JSON"),
    ("", "is not valid JSON"),
    ('["files"]', "is not an mpitrans manifest"),
    ('{"files": {}}', "does not list target rank"),
])
def test_garbled_manifest_is_a_failure_naming_it(example, output, tmp_path, text, why):
    dst = _with_manifest(output, tmp_path, text)
    src, src_strategy, dst_strategy = _paths(example)
    results = verify(src, str(dst), src_strategy, dst_strategy)
    assert not any(r.ok for r in results)
    assert all(str(dst / "mpitrans_manifest.json") in r.detail and why in r.detail for r in results)
    assert "4 of 4 targets FAILED" in format_results(results)


@pytest.mark.parametrize("launcher", ["plain", pytest.param("mpirun", marks=pytest.mark.mpi)])
def test_verify_command_on_missing_and_garbled_manifests(example, output, tmp_path, launcher):
    def run(dst: Path):
        args = _verify_args(example, dst)
        return python_m(args, timeout=120) if launcher == "plain" else mpirun(2, args, timeout=120)

    missing = run(_with_manifest(output, tmp_path / "missing", None))
    assert missing.returncode == 0, missing.stderr
    assert "all 4 target files match" in missing.stdout
    assert "note: no manifest" in missing.stdout and "compared with the sources only" in missing.stdout
    garbled_dst = _with_manifest(output, tmp_path / "garbled", "\x00\x01 garbage")
    garbled = run(garbled_dst)
    assert garbled.returncode == 1, garbled.stderr
    assert f"FAIL: manifest {garbled_dst / 'mpitrans_manifest.json'} is not valid JSON" in garbled.stdout
    assert "Traceback" not in garbled.stderr
    json.loads((output / "mpitrans_manifest.json").read_text())  # the shared output was left alone


@pytest.mark.parametrize("launcher", ["plain", pytest.param("mpirun", marks=pytest.mark.mpi)])
@pytest.mark.parametrize("options", [["--drop-optimizer-state"], ["--output-format", "safetensors"],
                                     ["--exclude", "model.layers.1.*"]])
def test_verify_takes_the_transforms_options(example, tmp_path, launcher, options):
    """Run with the transform's own options, verify checks that job: filtered parameters are not missing,
    safetensors targets are found and compared (their tensors in their own order). A damaged target still
    fails."""
    src, src_strategy, dst_strategy = _paths(example)
    dst = tmp_path / "dst"
    args = ["--src-checkpoint", src, "--src-strategy", src_strategy, "--dst-checkpoint", str(dst),
            "--dst-strategy", dst_strategy, "--quiet", *options]
    assert python_m(args, timeout=120).returncode == 0
    run = (lambda a: python_m(a, timeout=120)) if launcher == "plain" else (lambda a: mpirun(2, a, timeout=120))
    check = run(["verify", *[a for a in args if a != "--quiet"]])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all 4 target files match" in check.stdout
    target = next((dst / "rank_2").iterdir())
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    check = run(["verify", *[a for a in args if a != "--quiet"]])
    assert check.returncode == 1 and "target rank 2" in check.stdout, check.stdout + check.stderr
