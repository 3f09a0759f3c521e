"""Atomic folders: built beside their place, published by a rename, removed on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sllm_lib.files import building_folder, new_temp_folder, publish_folder


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
