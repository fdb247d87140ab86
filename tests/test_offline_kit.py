"""The offline kit: its parts arrive one transfer at a time, `unpack` waits until all are there, then
rebuilds the packed folder exactly, and refuses a part that is not the one its manifest names; a bad
argument to `build` is one line naming it, and --have reads names or `pip freeze` lines."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.offline_kit import MANIFEST, ROOT, WAITING, KitError, Manifest, main, read_have, split, unpack


def packed_kit(tmp_path: Path) -> tuple[Path, Path]:
    """A folder with an executable and random bytes (so xz cannot shrink it below three parts)."""
    site = tmp_path / "site"
    (site / "pkg" / "bin").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    (site / "pkg" / "bin" / "daemon").write_bytes(b"#!/bin/sh\necho up\n")
    (site / "pkg" / "bin" / "daemon").chmod(0o755)
    (site / "pkg" / "blob").write_bytes(os.urandom(3 * 4096))
    archive_path = tmp_path / "site.tar.xz"
    with tarfile.open(archive_path, "w:xz") as archive:
        archive.add(site, arcname=".")
    out = tmp_path / "kit"
    out.mkdir()
    parts = split(archive_path, out, part_bytes=5000)
    manifest = Manifest(python=f"{sys.version_info.major}.{sys.version_info.minor}", parts=parts,
                        packages={"pkg": "1.0"})
    (out / MANIFEST).write_text(json.dumps(asdict(manifest)))
    return site, out


def one_transfer(kit: Path, part: str, tmp_path: Path, index: int) -> Path:
    """What one call carries: the manifest and a single part."""
    carried = tmp_path / f"transfer{index}"
    carried.mkdir()
    shutil.copy(kit / MANIFEST, carried)
    shutil.copy(kit / part, carried)
    return carried


def test_parts_carried_one_at_a_time_unpack_to_the_same_folder(tmp_path):
    site, kit = packed_kit(tmp_path)
    names = [part.name for part in Manifest.read(kit / MANIFEST).parts]
    assert len(names) >= 3
    stash, into = tmp_path / "stash", tmp_path / "into"
    for index, name in enumerate(names[:-1]):
        assert unpack(one_transfer(kit, name, tmp_path, index), into, stash) == WAITING
        assert not into.exists()
    assert unpack(one_transfer(kit, names[-1], tmp_path, len(names)), into, stash) == 0
    for original in site.rglob("*"):
        copy = into / original.relative_to(site)
        assert copy.exists()
        if original.is_file():
            assert copy.read_bytes() == original.read_bytes()
    assert os.access(into / "pkg" / "bin" / "daemon", os.X_OK)


def test_a_part_of_another_build_is_refused_by_name(tmp_path):
    _, kit = packed_kit(tmp_path)
    first = Manifest.read(kit / MANIFEST).parts[0].name
    carried = one_transfer(kit, first, tmp_path, 0)
    (carried / first).write_bytes(b"not this part")
    with pytest.raises(KitError, match=rf"{first}: sha256 does not match"):
        unpack(carried, tmp_path / "into", tmp_path / "stash")
    assert not (tmp_path / "stash" / first).exists()


def test_a_missing_have_file_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "packages.txt"
    assert main(["build", "--python", "3.12", "--have", str(missing), "--out", str(tmp_path / "kit")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(missing) in error
    assert not (tmp_path / "kit").exists()


def test_a_python_that_is_not_major_minor_is_one_line_naming_it(tmp_path, capsys):
    assert main(["build", "--python", "python3", "--out", str(tmp_path / "kit")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--python python3" in error
    assert not (tmp_path / "kit").exists()


def test_the_have_file_takes_names_or_pip_freeze_lines(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("# the image's packages\nTorch==2.11.0\nnvidia_cudnn-cu13\n\nscikit-learn>=1.5  # pinned\n"
                    "jax[cuda12] @ file:///wheels/jax.whl\n")
    assert read_have(have) == {"torch", "nvidia-cudnn-cu13", "scikit-learn", "jax"}
    example = read_have(ROOT / "bench" / "example_gpu_image_packages.txt")
    assert "torch" in example and "pyarrow" not in example
