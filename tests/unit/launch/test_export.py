"""`sllm export`: the folder teammates read, and the model card built from the lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launch.export import export_model


@pytest.fixture
def umask_022():
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def _merged_folder(root: Path) -> Path:
    """A merged model folder as the merge stage leaves it: safetensors writes its file 0600."""
    folder = root / "merged"
    (folder / "tokenizer_extra").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "manifest.json").write_text(json.dumps({"base_model": "tiny:llama", "dtype": "bfloat16",
                                                      "num_parameters": 10}))
    fd = os.open(folder / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"weights")
    os.close(fd)
    (folder / "tokenizer_extra" / "vocab.json").write_text("{}")
    os.chmod(folder / "tokenizer_extra", 0o700)
    return folder


def test_an_export_is_readable_by_teammates(tmp_path: Path, umask_022) -> None:
    out = tmp_path / "export"
    result = export_model(str(_merged_folder(tmp_path)), out, tracking_uri=f"sqlite:///{tmp_path}/none.db")
    assert result.folder == out.resolve()
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes == {".": 0o755, "model.safetensors": 0o644, "config.json": 0o644, "README.md": 0o644,
                     "sllm_manifest.json": 0o644, "tokenizer_extra": 0o755, "tokenizer_extra/vocab.json": 0o644}
