"""Files sllm writes: its own cache root, atomic text/JSON writes, and the manifest of a stage output folder.

The lowest layer of the house: anything may import it, it imports nothing of sllm's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sllm_home() -> Path:
    """sllm's own cache root: $SLLM_HOME, default ~/.cache/sllm (presets, downloaded models, feature tier)."""
    return Path(os.environ.get("SLLM_HOME", Path.home() / ".cache" / "sllm"))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text via a temp file in the same folder, fsync, then rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary files others read (reports, datasets)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2))


def read_manifest(output_dir: Path) -> dict[str, Any] | None:
    """The manifest of a complete output folder, or None."""
    p = output_dir / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
