"""Files sllm writes: its own cache root, atomic text/JSON writes, and the manifest of a stage output folder.

The lowest layer of the house: anything may import it, it imports nothing of sllm's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

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


def new_temp_folder(final: Path) -> Path:
    """A fresh hidden folder beside `final` (same filesystem: `publish_folder` is a rename). Dot-prefixed, so
    listings of finished folders (checkpoint-N, presets, models) never see it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def publish_folder(tmp: Path, final: Path, *, if_exists: Literal["replace", "keep"] = "replace") -> Path:
    """Rename the finished `tmp` into place as `final`; a reader sees the old folder or the new one, never a part.

    replace: an existing `final` is renamed aside first and removed after. keep: an existing `final` wins (a
    concurrent builder of the same content got there first) and `tmp` is removed.
    """
    if final.exists():
        if if_exists == "keep":
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        old = final.with_name(f".{final.name}-old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final
    try:
        tmp.rename(final)
    except OSError:
        if if_exists == "keep" and final.exists():  # lost the race between the check and the rename
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        raise
    return final


@contextmanager
def building_folder(final: Path, *, if_exists: Literal["replace", "keep"] = "replace") -> Iterator[Path]:
    """Build a folder in a temp folder beside `final`, published there when the block ends without an error and
    removed when it raises (see `publish_folder` for `if_exists`).

    Example:
        with building_folder(out_dir) as tmp:
            model.save_pretrained(tmp)
    """
    tmp = new_temp_folder(final)
    try:
        yield tmp
        publish_folder(tmp, final, if_exists=if_exists)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
