"""Atomic folders: built beside their place, published by a rename, removed on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sllm_lib.files import (
    building_folder,
    current_umask,
    new_temp_folder,
    publish_folder,
    write_json_atomic,
    write_text_atomic,
)


def test_a_built_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with building_folder(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out-") and not final.exists()
        (tmp / "weights.bin").write_bytes(b"1")
    assert (final / "weights.bin").read_bytes() == b"1" and os.listdir(tmp_path) == ["out"]
    with pytest.raises(RuntimeError):
        with building_folder(final) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert (final / "weights.bin").read_bytes() == b"1" and os.listdir(tmp_path) == ["out"]  # old one untouched


def test_replace_swaps_and_keep_lets_the_first_win(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with building_folder(final) as tmp:
        (tmp / "v").write_text("1")
    with building_folder(final) as tmp:  # replace (default)
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2" and os.listdir(tmp_path) == ["model"]
    with building_folder(final, if_exists="keep") as tmp:  # a concurrent builder already published
        (tmp / "v").write_text("3")
    assert (final / "v").read_text() == "2" and os.listdir(tmp_path) == ["model"]


def test_publish_a_subfolder_of_a_temp_folder(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m-1"
    tmp = new_temp_folder(final)
    (tmp / "nested" / "m").mkdir(parents=True)
    (tmp / "nested" / "m" / "config.json").write_text("{}")
    assert publish_folder(tmp / "nested" / "m", final, if_exists="keep") == final
    assert (final / "config.json").is_file()


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def _private_tree(tmp: Path) -> None:
    """What mkstemp-style writers leave: a 0600 weights file (safetensors writes so), a 0700 sub-folder, a 0700
    script."""
    fd = os.open(tmp / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    (tmp / "tokenizer").mkdir(mode=0o700)
    (tmp / "tokenizer" / "vocab.json").write_text("{}")
    os.chmod(tmp / "tokenizer" / "vocab.json", 0o600)
    (tmp / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp / "run.sh", 0o700)


@pytest.mark.parametrize(("mask", "folder", "file", "script"), [(0o022, 0o755, 0o644, 0o755),
                                                                (0o027, 0o750, 0o640, 0o750),
                                                                (0o002, 0o775, 0o664, 0o775)])
def test_a_published_folder_follows_the_umask_not_mkdtemp(tmp_path: Path, umask, mask, folder, file, script) -> None:
    umask(mask)
    final = tmp_path / "out"
    with building_folder(final) as tmp:
        assert _mode(tmp) == 0o700  # private while it is being built
        _private_tree(tmp)
    assert _mode(final) == folder and _mode(final / "tokenizer") == folder
    assert _mode(final / "model.safetensors") == file and _mode(final / "tokenizer" / "vocab.json") == file
    assert _mode(final / "run.sh") == script


def test_an_atomic_write_follows_the_umask(tmp_path: Path, umask) -> None:
    umask(0o002)
    write_text_atomic(tmp_path / "report.md", "x")
    assert _mode(tmp_path / "report.md") == 0o664
    umask(0o077)
    write_json_atomic(tmp_path / "result.json", {"a": 1})
    assert _mode(tmp_path / "result.json") == 0o600


def test_current_umask_reads_without_changing_it(umask) -> None:
    umask(0o027)
    assert current_umask() == 0o027 and current_umask() == 0o027
