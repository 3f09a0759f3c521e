"""Where cache objects live: a local directory (`LocalStore`) or an S3 prefix (`RemoteStore`).

Both stores deal in whole objects named by a relative key ("<fp>/<2 hex>/<hash>.safetensors"), and both
publish an object atomically: a reader sees the previous object, no object, or the complete new one.

* Local: the bytes go to a hidden temp file in the destination directory, are fsynced, then
  `os.replace`d over the final name (atomic on POSIX within one filesystem). Temp names start with "."
  and end in ".tmp", so listings never report them; a killed writer leaves only such a temp file, which
  `clean_temps` removes once it is old.
* S3: the object is fully serialised in memory and sent with ONE PutObject (`_pipe_file` with a chunk
  size that keeps it single-part). S3 (and moto, and rclone's disk backend, which receives into a hidden
  temp file and renames) only make an object visible once its whole body arrived, so a writer killed
  mid-upload leaves nothing. `fs.open(path, "wb")` is never used: an exception inside its `with` commits the
  truncated object.

Every remote call runs on fsspec's IO loop under `asyncio.wait_for(deadline)`, and the calling thread
also waits on the future with that deadline (+1 s): botocore's connect/read timeouts do not bound a
server that accepts connections and then trickles or stalls (a SIGSTOPped server does exactly that: the
kernel still completes the TCP handshake). After a failure the remote is marked down for `cooldown_s`,
so the following calls fail at once instead of each paying the deadline.

A read whose body ends early is not such a failure: it is one bad read of one key (`TornRead`), and the
remote stays up. `rclone serve s3` on a local disk does that when a PUT replaces a key while a GET of it
streams: the PUT removes the old file before renaming its temp file in, so the GET has sent its
Content-Length and then finds no file (its log says "lstat ...: no such file or directory"; the client sees
aiohttp's ClientPayloadError, "received 120 of 6144328 bytes"). The object is whole again a moment later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("sllm_lib.cache")

TEMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------------------------- local


class LocalStore:
    """Objects as files under `root`. With `cap_bytes`, the store is a bounded LRU tier (`evict`)."""

    def __init__(self, root: str | Path, *, cap_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.cap_bytes = cap_bytes
        self._used: int | None = None  # estimate of the entry bytes on disk (tiers only), rescanned on evict
        self._lock = threading.Lock()

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str, *, touch: bool = False) -> bytes | None:
        """The object's bytes, or None when it does not exist (or vanished under a concurrent eviction)."""
        path = self.path(rel)
        try:
            with open(path, "rb", buffering=0) as f:  # unbuffered: one read into the result, no extra copy
                data = f.readall()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        if touch:  # LRU clock: mtime = last use (atime is unreliable under relatime/noatime)
            try:
                os.utime(path, None)
            except OSError:
                pass
        return data

    def write(self, rel: str, data: bytes) -> None:
        """Atomically publish `data` under `rel` (temp file in the same directory, fsync, os.replace)."""
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if self.cap_bytes is not None:
            with self._lock:
                if self._used is None:
                    self._used = sum(size for _, size, _ in self.walk(""))
                else:
                    self._used += len(data)
                over = self._used > self.cap_bytes
            if over:
                self.evict(protect={rel})

    def delete(self, rel: str) -> int:
        """Remove the object; returns the bytes freed (0 when it was not there)."""
        path = self.path(rel)
        try:
            size = path.stat().st_size
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return 0
        return size

    def list_dirs(self, rel: str = "") -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.path(rel)) if e.is_dir() and not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk(self, rel: str) -> Iterator[tuple[str, int, float]]:
        """(relative key, size, mtime) of the visible files under `rel` (temp files are hidden)."""
        stack = [self.path(rel) if rel else self.root]
        while stack:
            d = stack.pop()
            try:
                it = list(os.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        yield Path(e.path).relative_to(self.root).as_posix(), st.st_size, st.st_mtime
                except FileNotFoundError:  # removed while we looked
                    continue

    def remove_tree(self, rel: str) -> tuple[int, int]:
        """Delete everything under `rel` (temp files too): (files, bytes)."""
        import shutil

        top = self.path(rel)
        files = size = 0
        for dirpath, _, names in os.walk(top):
            for n in names:
                try:
                    size += os.stat(os.path.join(dirpath, n)).st_size
                    files += 1
                except FileNotFoundError:
                    pass
        shutil.rmtree(top, ignore_errors=True)
        with self._lock:
            self._used = None
        return files, size

    def clean_temps(self, max_age_s: float = 3600.0) -> int:
        """Remove temp files older than `max_age_s` (left by killed writers); returns how many."""
        cutoff = time.time() - max_age_s
        removed = 0
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                if n.startswith(".") and n.endswith(TEMP_SUFFIX):
                    p = os.path.join(dirpath, n)
                    try:
                        if os.stat(p).st_mtime < cutoff:
                            os.unlink(p)
                            removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def evict(self, *, protect: set[str] = frozenset(), low_water: float = 0.9) -> tuple[int, int]:
        """Delete least-recently-used entries until the tier holds <= low_water * cap; (files, bytes).

        Safe against concurrent readers and other evicting processes: a file removed under a reader is a
        miss for it (the reader opened it first, or gets FileNotFoundError), and a file another process
        already removed is skipped.
        """
        if self.cap_bytes is None:
            return 0, 0
        files = sorted(self.walk(""), key=lambda t: t[2])  # oldest use first
        total = sum(size for _, size, _ in files)
        target = int(self.cap_bytes * low_water)
        n = freed = 0
        for rel, size, _ in files:
            if total <= target:
                break
            if rel in protect:
                continue
            try:
                os.unlink(self.path(rel))
                n += 1
                freed += size
            except FileNotFoundError:
                pass
            total -= size
        with self._lock:
            self._used = total
        if n:
            log.debug("feature cache tier %s: evicted %d entries (%d bytes)", self.root, n, freed)
        return n, freed


# ---------------------------------------------------------------------------------------------- remote


class RemoteUnavailable(Exception):
    """The remote store failed, timed out, or is in its cool-down after a failure."""


class TornRead(RemoteUnavailable):
    """One object's body ended before its Content-Length (it was being replaced): retry it or treat it as a
    miss. The endpoint answered, so this never marks the remote down; callers that do not handle it treat
    it like any failed call."""


def _torn_body_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a response body cut short, for the HTTP stacks s3fs may run on."""
    import http.client

    types: list[type[BaseException]] = [http.client.IncompleteRead]
    try:
        from aiohttp import ClientPayloadError  # aiobotocore's transport (s3fs)

        types.append(ClientPayloadError)
    except ImportError:
        pass
    try:
        from botocore.exceptions import IncompleteReadError, ResponseStreamingError

        types += [IncompleteReadError, ResponseStreamingError]
    except ImportError:
        pass
    return tuple(types)


def split_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):].strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: no bucket (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


class RemoteStore:
    """Objects under s3://bucket/prefix through s3fs, every call bounded by a hard deadline."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None, storage_options: dict | None = None,
                 timeout_s: float = 10.0, cooldown_s: float = 30.0) -> None:
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = split_s3_uri(uri)
        self._endpoint_url = endpoint_url
        self._options = dict(storage_options or {})  # may hold credentials: never logged or repr'd
        # one remote call (request + retries) may take at most `deadline_s`, which leaves a quarter of
        # `timeout_s` for the rest of a cache call (hashing, decoding, local tier, computing a fallback)
        self.deadline_s = max(0.5, 0.75 * timeout_s)
        self.connect_timeout_s = max(0.2, min(3.0, 0.25 * timeout_s))
        self.read_timeout_s = max(0.5, min(10.0, 0.5 * timeout_s))
        self.cooldown_s = cooldown_s
        self._fs_obj: Any = None
        self._fs_pid: int | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""

    def __repr__(self) -> str:
        return f"RemoteStore({self.uri!r})"

    # -- plumbing

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _path(self, rel: str) -> str:
        return f"{self.bucket}/{self.key(rel)}"

    def _fs(self):
        with self._lock:  # `FeatureCache.features_many` calls from several threads: build one fs, not one each
            return self._fs_locked()

    def _fs_locked(self):
        # rebuilt in a forked child: the parent's fs is bound to an event loop thread the child lacks
        if self._fs_obj is None or self._fs_pid != os.getpid():
            import s3fs

            opts = dict(self._options)
            config = {
                "connect_timeout": self.connect_timeout_s,
                "read_timeout": self.read_timeout_s,
                "retries": {"total_max_attempts": 2, "mode": "standard"},
            }
            config.update(opts.pop("config_kwargs", None) or {})
            if self._endpoint_url:
                opts["endpoint_url"] = self._endpoint_url
            opts.setdefault("max_concurrency", 1)  # one GET per object: no HEAD + ranged reads
            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, config_kwargs=config, **opts)
            fs.retries = 1  # botocore's retries (above) are the only ones: s3fs's loop would multiply them
            self._fs_obj, self._fs_pid = fs, os.getpid()
        return self._fs_obj

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def down_reason(self) -> str:
        return self._down_reason

    def mark_down(self, reason: str) -> None:
        with self._lock:
            was_up = time.monotonic() >= self._down_until
            self._down_until = time.monotonic() + self.cooldown_s
            self._down_reason = reason
        if was_up:
            log.warning("feature cache %s is unreachable (%s); not retrying it for %.0f s",
                        self.uri, reason, self.cooldown_s)

    def mark_up(self) -> None:
        with self._lock:
            self._down_until = 0.0
            self._down_reason = ""

    def budget(self) -> float:
        """An absolute deadline for one cache call: all its remote operations together get `deadline_s`."""
        return time.monotonic() + self.deadline_s

    def _run(self, what: str, make: Callable[[Any], Any], *, missing_ok: bool = False,
             until: float | None = None, torn_ok: bool = False) -> Any:
        """Run the coroutine `make(fs)` under the deadline (and before `until`, the calling cache call's
        budget, when given). FileNotFoundError passes through when `missing_ok` (a plain miss); a body cut
        short raises TornRead when `torn_ok` (reads); every other failure marks the remote down and raises
        RemoteUnavailable."""
        now = time.monotonic()
        if now < self._down_until:
            raise RemoteUnavailable(f"{self.uri} is marked unreachable for another "
                                    f"{self._down_until - now:.0f} s ({self._down_reason})")
        deadline = self.deadline_s if until is None else min(self.deadline_s, until - now)
        if deadline < 0.05:  # this call already spent its time on slow answers: skip, it is no outage
            raise RemoteUnavailable(f"{what}: the call's {self.deadline_s:.1f} s budget for S3 is spent")
        try:
            fs = self._fs()

            async def bounded():
                return await asyncio.wait_for(make(fs), deadline)

            future = asyncio.run_coroutine_threadsafe(bounded(), fs.loop)
            try:
                return future.result(deadline + 1.0)
            except BaseException:
                future.cancel()
                raise
        except FileNotFoundError:
            if missing_ok:
                return None
            reason = f"{what}: not found (missing bucket?)"
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError, TimeoutError):
            reason = f"{what}: no answer within {deadline:.1f} s"
        except Exception as exc:  # botocore/aiohttp/OS errors: all mean "the remote did not serve this"
            reason = f"{what}: {type(exc).__name__}: {exc}"
            if torn_ok and isinstance(exc, _torn_body_errors()):
                raise TornRead(reason) from None
        self.mark_down(reason)
        raise RemoteUnavailable(reason)

    # -- object operations

    def connect(self) -> None:
        """Create the S3 client now (no request is sent): calls made at once from several threads then share
        it, instead of racing to create one each (s3fs creates it lazily in the first call)."""
        self._run("connect", lambda fs: fs.set_session())

    def read(self, rel: str, *, until: float | None = None) -> bytes | None:
        """The object's bytes, or None when it does not exist. TornRead when its body was cut short
        (see the module docstring); RemoteUnavailable when the remote did not answer."""
        path = self._path(rel)
        return self._run(f"get {rel}", lambda fs: fs._cat_file(path), missing_ok=True, until=until, torn_ok=True)

    def write(self, rel: str, data: bytes, *, until: float | None = None) -> None:
        path = self._path(rel)
        # chunksize 2 GiB: one PutObject for anything under S3's 5 GiB limit, never a multipart upload
        # (which a killed writer would leave behind as an orphan)
        self._run(f"put {rel}", lambda fs: fs._pipe_file(path, data, chunksize=2 << 30), until=until)

    def delete(self, rel: str, *, until: float | None = None) -> None:
        path = self._path(rel)
        self._run(f"delete {rel}", lambda fs: fs._rm_file(path), missing_ok=True, until=until)

    def list(self, rel_prefix: str, *, delimiter: str | None = None) -> Iterator[tuple[str, int]]:
        """(relative key, size) of objects under `rel_prefix`, or ("dir/", 0) common prefixes with a
        delimiter; one bounded request per page of 1000."""
        prefix = self.key(rel_prefix)
        strip = len(self.key(""))
        token = None
        while True:
            kw: dict = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if delimiter:
                kw["Delimiter"] = delimiter
            if token:
                kw["ContinuationToken"] = token

            def call(fs, kw=kw):
                return fs._call_s3("list_objects_v2", **kw)

            page = self._run(f"list {rel_prefix or '/'}", call, missing_ok=True)
            if page is None:
                return
            for p in page.get("CommonPrefixes") or []:
                yield p["Prefix"][strip:], 0
            for o in page.get("Contents") or []:
                yield o["Key"][strip:], int(o.get("Size") or 0)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete_many(self, rels: list[str]) -> None:
        for i in range(0, len(rels), 1000):
            batch = [{"Key": self.key(r)} for r in rels[i:i + 1000]]

            def call(fs, batch=batch):
                return fs._call_s3("delete_objects", Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

            out = self._run(f"delete {len(batch)} objects", call, missing_ok=True) or {}
            errors = out.get("Errors") or []
            if errors:
                raise RemoteUnavailable(f"delete failed for {len(errors)} objects, e.g. {errors[0]}")
