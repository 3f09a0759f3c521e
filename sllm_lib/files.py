"""Files sllm writes: its own cache root, atomic text/JSON writes, and the manifest of a stage output folder.

What sllm publishes (atomic files, published folders) gets the modes a plain `open`/`mkdir` would give under
the process umask (0644 / 0755 with the usual 022), not the private 0600 / 0700 of `mkstemp` / `mkdtemp` or of
libraries that write through such temp files (safetensors): teammates on a shared filesystem read stage outputs
and exports.

The lowest layer of the house: anything may import it, it imports nothing of sllm's.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

MANIFEST = "manifest.json"


def sllm_home() -> Path:
    """sllm's own cache root: $SLLM_HOME, default ~/.cache/sllm (presets, downloaded models, feature tier)."""
    return Path(os.environ.get("SLLM_HOME", Path.home() / ".cache" / "sllm"))


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status; elsewhere set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: Path) -> None:
    """Give `root` (a file, or a folder and everything in it) the modes the umask gives new files: folders and
    executable files 0777 less the umask, other files 0666 less the umask. Symbolic links are left alone."""
    mask = current_umask()

    def fix(path: str, executable: bool) -> None:
        os.chmod(path, (0o777 if executable else 0o666) & ~mask)

    if root.is_symlink():
        return
    if not root.is_dir():
        fix(str(root), bool(root.stat().st_mode & 0o111))
        return
    for folder, _, files in os.walk(root):
        fix(folder, True)
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                fix(path, bool(st.st_mode & 0o111))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text via a temp file in the same folder, fsync, then rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; others read these (reports, datasets)
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
    concurrent builder of the same content got there first) and `tmp` is removed. The published folder and its
    contents get the umask's modes (`follow_umask`): `mkdtemp` made it 0700.
    """
    if final.exists() and if_exists == "keep":
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    follow_umask(tmp)
    if final.exists():
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


# Folders of the system a run must never be written into (a spec's output_dir pointing here is refused up front).
_SYSTEM_ROOTS = ("/dev", "/proc", "/sys", "/boot", "/etc", "/bin", "/sbin", "/usr", "/lib", "/lib64", "/run")
_NAME_BYTES_MAX = 255  # one file or folder name (ext4, xfs, NFS)
_PATH_BYTES_MAX = 4000  # a whole path, with room under PATH_MAX (4096) for the files inside a run folder


def folder_problems(path: Path, field: str) -> list[str]:
    """Why the folder `path` could not be created and written by this user (empty: it can), checked without
    creating anything: a system folder, a name or path too long, a file where a folder must be, no write access.
    `field` names the spec field the message blames."""
    p = Path(os.path.normpath(path.expanduser() if path.is_absolute() or str(path).startswith("~")
                              else Path.cwd() / path))
    p = p.expanduser()
    for root in _SYSTEM_ROOTS:
        if p == Path(root) or Path(root) in p.parents:
            return [f"{field}: {p} is inside the system folder {root}; choose a folder of your own"]
    long = next((part for part in p.parts if len(part.encode()) > _NAME_BYTES_MAX), None)
    if long is not None:
        return [f"{field}: the name {long[:40]!r}… ({len(long.encode())} bytes) is longer than the file system "
                f"allows ({_NAME_BYTES_MAX} bytes)"]
    if len(str(p).encode()) > _PATH_BYTES_MAX:
        return [f"{field}: the path {str(p)[:60]}… is {len(str(p).encode())} bytes long (at most {_PATH_BYTES_MAX})"]
    existing = p
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.is_file() else ("a broken link" if existing.is_symlink() else "not a folder")
        return [f"{field}: {existing} is {what}, so the folder {p} cannot be made there"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{field}: cannot create {p}: {existing} is not writable by this user"]
    return []
