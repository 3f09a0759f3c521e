"""`FeatureCache`: a shared, content-addressed cache of Whisper log-mel features.

Layout under the root (a local directory or s3://bucket/prefix):

    <root>/<fp>/settings.json                    the extractor settings the fingerprint hashes
    <root>/<fp>/<hash[:2]>/<hash>.safetensors    one entry: float16 (n_chunks, n_mels, n_frames), checksummed
    <root>/<fp>/manifests/<dataset>.json         per-dataset rows written by a builder

An entry is never served unless it passes `codec.decode` (format, key, shape, dtype, checksum,
finite values). A bad entry is a miss: it is deleted (readwrite mode), counted in `stats.corrupt`,
logged, and `features()` recomputes and rewrites it. Writes are atomic (see `backends`). Remote calls
are bounded (`timeout_s`); when S3 is down or hung, `features()` computes the features itself
(`stats.fallbacks`), or raises DataError with `required=True`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np

from sllm_lib.cache import codec
from sllm_lib.cache.backends import LocalStore, RemoteStore, RemoteUnavailable, TornRead
from sllm_lib.cache.keys import (
    FP_RE,
    HASH_RE,
    audio_hash as _audio_hash,
    check_fp,
    check_hash,
    extractor_key,
    extractor_settings,
    settings_fingerprint,
)
from sllm_lib.errors import DataError

log = logging.getLogger("sllm_lib.cache")

Mode = Literal["readwrite", "readonly", "off"]
ENTRY_SUFFIX = ".safetensors"
SETTINGS_NAME = "settings.json"
MANIFESTS = "manifests"
FALLBACK_WARN_S = 30.0
RECOMPUTE_ATOL = 2e-3  # verify(): float16 ulp is ~1e-3 for |x| in [1, 2); recomputation may flip the last bit
TORN_RETRY_DELAYS_S = (0.05, 0.2, 0.5)  # a torn read (key being replaced) is retried after these pauses
PREFETCH_REMOTE = 8  # `features_many` default with S3: parallel GETs (botocore's connection pool holds 10)
PREFETCH_LOCAL = 2  # with a directory: one read overlaps the caller's tokenizing


def _compute(path: str | Path, feature_extractor: Any) -> np.ndarray:
    """The float32 log-mel chunks, computed. Not `audio_features()`: that reads through the active cache,
    which may be this one."""
    from sllm_lib.audio.features import load_audio, log_mel_chunks

    return log_mel_chunks(load_audio(path), feature_extractor)


@dataclass
class CacheStats:
    """Counters of one FeatureCache (per process).

    hits = local_hits + remote_hits; misses: lookups that found no valid entry; writes: entries written
    to the cache's own store (S3, or the directory for a local uri); corrupt: invalid entries met (and
    dropped) on read; errors: failed store operations; fallbacks: `features()` calls that computed the
    features because the cache could not be used; torn_reads: S3 reads whose body was cut short or
    changed under them because the key was being replaced (retried; a miss when every retry was torn too);
    bytes_read/bytes_written: entry bytes moved from/to any tier (the local tier's copies included).
    """

    hits: int = 0
    misses: int = 0
    local_hits: int = 0
    remote_hits: int = 0
    writes: int = 0
    corrupt: int = 0
    errors: int = 0
    fallbacks: int = 0
    torn_reads: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FeatureCache:
    """Get-or-compute cache of audio features, shared through a directory or an S3 prefix.

    uri: a local directory (embedded default) or s3://bucket/prefix. local_dir: a disk tier in front of
    S3 (ignored for a local uri), capped at local_cap_gb with least-recently-used eviction. mode:
    "readwrite"; "readonly" (never writes or deletes in the shared store; the node-local tier is still
    filled); "off" (no I/O at all: `features()` just computes). required: a cache that cannot be
    used is an error (DataError naming the uri) instead of a fallback. endpoint_url/storage_options go to
    s3fs (credentials come from there or from the AWS environment; they are never logged). timeout_s
    bounds the time any call spends waiting on S3; cooldown_s is how long the remote is skipped after a
    failure. prefetch: how many entries `features_many` reads or computes at once (default PREFETCH_REMOTE with
    S3, PREFETCH_LOCAL for a directory).
    """

    def __init__(self, uri: str, *, mode: Mode = "readwrite", local_dir: str | Path | None = None,
                 local_cap_gb: float | None = None, required: bool = False, endpoint_url: str | None = None,
                 storage_options: dict | None = None, timeout_s: float = 10.0, cooldown_s: float = 30.0,
                 prefetch: int | None = None) -> None:
        if mode not in ("readwrite", "readonly", "off"):
            raise ValueError(f"mode must be readwrite, readonly or off, not {mode!r}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch!r}")
        self.uri = str(uri)
        self.mode: Mode = mode
        self.required = required
        self.timeout_s = timeout_s
        self.stats = CacheStats()
        self._stats_lock = threading.Lock()
        self._settings: dict[str, dict] = {}  # fp -> extractor settings (registered or read back)
        self._published: set[str] = set()  # fps whose settings.json this instance wrote
        self._no_settings: set[str] = set()  # fps with no settings.json in the store
        self._hash_memo: dict[tuple, str] = {}
        self._fp_memo: dict[tuple, str] = {}  # extractor_key -> fingerprint
        # rel -> data checksum of the entry this process wrote or fully checked on this node's disk: a later local
        # read of the same entry checks its structure and length, not its checksum again (see codec.check)
        self._verified: dict[str, str] = {}
        self._last_fallback_warning = -1e9
        self.remote: RemoteStore | None = None
        self.local: LocalStore | None = None  # the store itself (local uri) or the tier in front of S3
        cap = None if local_cap_gb is None else int(local_cap_gb * 1024 ** 3)
        if self.uri.startswith("s3://"):
            self.remote = RemoteStore(self.uri, endpoint_url=endpoint_url, storage_options=storage_options,
                                      timeout_s=timeout_s, cooldown_s=cooldown_s)
            if local_dir is not None:
                self.local = LocalStore(local_dir, cap_bytes=cap)
        elif "://" in self.uri and not self.uri.startswith("file://"):
            raise DataError(f"feature cache {self.uri}: unsupported scheme (use a directory or s3://bucket/prefix)")
        else:
            self.local = LocalStore(self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri)
        self.prefetch = prefetch or (PREFETCH_REMOTE if self.remote is not None else PREFETCH_LOCAL)

    def __repr__(self) -> str:
        return f"FeatureCache({self.uri!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------------------------------ helpers

    def _count(self, **delta: int) -> None:
        with self._stats_lock:
            for k, v in delta.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    @property
    def _tier(self) -> LocalStore | None:
        """The local tier in front of S3 (None for a local uri, where `self.local` is the store itself)."""
        return self.local if self.remote is not None else None

    @staticmethod
    def _rel(audio_hash: str, fp: str) -> str:
        return f"{fp}/{audio_hash[:2]}/{audio_hash}{ENTRY_SUFFIX}"

    def _unavailable(self, what: str, exc: Exception) -> DataError:
        return DataError(f"feature cache {self.uri} is unavailable ({what}: {exc}); "
                         "it is required (cache required=true), so this run stops")

    def key_path(self, audio_hash: str, fp: str) -> str:
        """Where the entry lives: <root>/<fp>/<2 hex>/<hash>.safetensors."""
        rel = self._rel(check_hash(audio_hash), check_fp(fp))
        if self.remote is not None:
            return f"s3://{self.remote.bucket}/{self.remote.key(rel)}"
        return str(self.local.path(rel))

    def register(self, feature_extractor: Any) -> str:
        """The fingerprint of `feature_extractor`; remembers its settings (expected entry shape)."""
        key = extractor_key(feature_extractor)
        fp = self._fp_memo.get(key) if key is not None else None
        if fp is None:
            settings = extractor_settings(feature_extractor)
            fp = settings_fingerprint(settings)
            self._settings.setdefault(fp, settings)
            if key is not None:
                self._fp_memo[key] = fp
        return fp

    def _expected(self, fp: str, until: float | None = None) -> tuple[int | None, int | None]:
        """(n_mels, n_frames) of the fingerprint: registered, else its settings.json, else unknown."""
        settings = self._settings.get(fp)
        if settings is None:
            settings = self._load_settings(fp, until)
        if settings is None:
            return None, None
        return settings.get("n_mels"), settings.get("n_frames")

    def _load_settings(self, fp: str, until: float | None = None) -> dict | None:
        if fp in self._no_settings:
            return None
        rel = f"{fp}/{SETTINGS_NAME}"
        try:
            data = self._remote_read(rel, until) if self.remote is not None else self.local.read(rel)
        except RemoteUnavailable:
            return None
        if data is None:
            self._no_settings.add(fp)  # asked once per instance: entries are then checked without a shape
            return None
        try:
            doc = json.loads(data)
            settings = doc["settings"]
            if settings_fingerprint(settings) != fp:  # a settings.json that does not hash to its folder
                raise ValueError("fingerprint mismatch")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("feature cache %s: ignoring invalid %s (%s)", self.uri, rel, exc)
            return None
        self._settings[fp] = settings
        return settings

    def _publish_settings(self, fp: str, until: float | None = None) -> None:
        """Write <fp>/settings.json once per instance (identical content from every writer)."""
        if fp in self._published or fp not in self._settings:
            return
        data = json.dumps({"fingerprint": fp, "settings": self._settings[fp]}, sort_keys=True, indent=1).encode()
        rel = f"{fp}/{SETTINGS_NAME}"
        if self.remote is not None:
            self.remote.write(rel, data, until=until)
        else:
            self.local.write(rel, data)
        self._published.add(fp)

    # ------------------------------------------------------------------------------------------ get/put

    def _decode(self, data: bytes, audio_hash: str, fp: str, until: float | None = None) -> np.ndarray:
        n_mels, n_frames = self._expected(fp, until)
        return codec.decode(data, audio_hash=audio_hash, fp=fp, n_mels=n_mels, n_frames=n_frames)

    def _decode_local(self, rel: str, data: bytes, audio_hash: str, fp: str, until: float | None) -> np.ndarray:
        """`_decode` of bytes read from this node's disk: the checksum is computed once per entry and process."""
        n_mels, n_frames = self._expected(fp, until)
        arr, sha = codec.check(data, audio_hash=audio_hash, fp=fp, n_mels=n_mels, n_frames=n_frames,
                               verified_sha256=self._verified.get(rel))
        self._remember(rel, sha)
        return arr

    def _remember(self, rel: str, sha: str) -> None:
        if len(self._verified) > 2_000_000:  # ~300 MB of keys: start over rather than grow without bound
            self._verified.clear()
        self._verified[rel] = sha

    def _corrupt(self, where: str, audio_hash: str, fp: str, exc: Exception) -> None:
        self._count(corrupt=1)
        log.warning("feature cache %s: dropping corrupt entry %s/%s in %s (%s); it will be recomputed",
                    self.uri, fp, audio_hash, where, exc)

    def _remote_read(self, rel: str, until: float | None = None) -> bytes | None:
        """`remote.read`, retrying a torn read (the key was being replaced by another writer) after short
        pauses within the call's budget. TornRead when every try was torn; RemoteUnavailable as read()."""
        for delay in (*TORN_RETRY_DELAYS_S, None):
            try:
                return self.remote.read(rel, until=until)
            except TornRead as exc:
                self._count(torn_reads=1)
                if delay is None or (until is not None and time.monotonic() + delay >= until):
                    raise
                log.debug("feature cache %s: %s; retrying in %.2f s", self.uri, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _budget(self) -> float | None:
        """The deadline shared by every S3 operation of one public call (None without S3)."""
        return self.remote.budget() if self.remote is not None else None

    def _lookup(self, audio_hash: str, fp: str, until: float | None = None) -> np.ndarray | None:
        """The stored float16 array or None (miss). RemoteUnavailable when S3 could not answer."""
        rel = self._rel(audio_hash, fp)
        if self.local is not None:
            try:
                data = self.local.read(rel, touch=self._tier is not None and self._tier.cap_bytes is not None)
            except OSError as exc:
                self._count(errors=1)
                log.warning("feature cache %s: cannot read %s (%s)", self.uri, self.local.path(rel), exc)
                data = None
            if data is not None:
                try:
                    arr = self._decode_local(rel, data, audio_hash, fp, until)
                except codec.CorruptEntry as exc:
                    self._verified.pop(rel, None)
                    self._corrupt(str(self.local.path(rel)), audio_hash, fp, exc)
                    if self.mode == "readwrite" or self._tier is not None:  # the tier is ours to repair
                        self.local.delete(rel)
                else:
                    self._count(hits=1, local_hits=1, bytes_read=len(data))
                    return arr
        if self.remote is None:
            self._count(misses=1)
            return None
        try:
            data = self._remote_read(rel, until)  # RemoteUnavailable (an outage) propagates
        except TornRead as exc:  # one key in flux, the remote is fine: a miss
            log.info("feature cache %s: %s (read torn %d times); a miss", self.uri, exc, len(TORN_RETRY_DELAYS_S) + 1)
            self._count(misses=1)
            return None
        if data is None:
            self._count(misses=1)
            return None
        try:
            arr = self._decode(data, audio_hash, fp, until)
        except codec.CorruptEntry as exc:
            rechecked = self._recheck_remote(rel, data, audio_hash, fp, exc, until)
            if rechecked is None:
                self._count(misses=1)
                return None
            arr, data = rechecked
        self._count(hits=1, remote_hits=1, bytes_read=len(data))
        if self._tier is not None:
            self._tier_write(rel, data)
        return arr

    def _recheck_remote(self, rel: str, data: bytes, audio_hash: str, fp: str, exc: codec.CorruptEntry,
                        until: float | None) -> tuple[np.ndarray, bytes] | None:
        """An S3 object failed its check: read it once more before calling it corrupt. A store whose
        overwrite is not atomic for readers can serve a key mid-replacement; then the second read is whole
        (a hit: the array and its bytes) or differs from the first (in flux: a miss, nothing deleted). Only
        an object that reads back byte-identical and still bad is corrupt, and dropped (readwrite)."""
        where = f"s3://{self.remote.bucket}/{self.remote.key(rel)}"
        time.sleep(TORN_RETRY_DELAYS_S[0])
        try:
            again = self._remote_read(rel, until)
        except RemoteUnavailable:
            again = None
        if again is not None and again != data:
            try:
                arr = self._decode(again, audio_hash, fp, until)
            except codec.CorruptEntry:
                arr = None
            self._count(torn_reads=1)
            log.info("feature cache %s: %s changed while it was read (%s); %s", self.uri, where, exc,
                     "the second read is whole" if arr is not None else "a miss")
            return None if arr is None else (arr, again)
        if again is None:  # gone (or S3 stopped answering): nothing stable to judge, a miss
            return None
        self._corrupt(where, audio_hash, fp, exc)
        if self.mode == "readwrite":
            try:
                self.remote.delete(rel, until=until)
            except RemoteUnavailable:
                self._count(errors=1)
        return None

    def _tier_write(self, rel: str, data: bytes) -> None:
        """Copy checked (or just encoded) entry bytes to the node's disk tier."""
        try:
            self._tier.write(rel, data)
            self._count(bytes_written=len(data))
            self._remember(rel, codec.stated_sha256(data))
        except OSError as exc:  # a full or read-only node disk must not fail the job
            self._count(errors=1)
            log.warning("feature cache %s: local tier %s not written (%s)", self.uri, self._tier.root, exc)

    def get(self, audio_hash: str, fp: str) -> np.ndarray | None:
        """The cached features as stored, float16 (n_chunks, n_mels, n_frames), or None on a miss.

        S3 trouble is a miss (counted in stats.errors), or DataError when the cache is required.
        """
        check_hash(audio_hash), check_fp(fp)
        if self.mode == "off":
            return None
        try:
            arr = self._lookup(audio_hash, fp, self._budget())
        except RemoteUnavailable as exc:
            self._count(errors=1, misses=1)
            if self.required:
                raise self._unavailable("get", exc) from None
            return None
        return arr

    def _store(self, audio_hash: str, fp: str, stored: np.ndarray, until: float | None = None) -> None:
        """Write the float16 entry to the store (readwrite) and the local tier. RemoteUnavailable propagates."""
        data = codec.encode(stored, audio_hash=audio_hash, fp=fp)
        rel = self._rel(audio_hash, fp)
        if self.remote is None:
            if self.mode == "readwrite":
                self._publish_settings(fp)
                self.local.write(rel, data)
                self._count(writes=1, bytes_written=len(data))
                self._remember(rel, codec.stated_sha256(data))
            return
        if self._tier is not None:  # first, so this node hits even when the S3 write fails
            self._tier_write(rel, data)
        if self.mode == "readwrite":
            self._publish_settings(fp, until)
            self.remote.write(rel, data, until=until)
            self._count(writes=1, bytes_written=len(data))

    def put(self, audio_hash: str, fp: str, features: np.ndarray) -> None:
        """Store `features` (any float dtype; stored as float16) under (audio_hash, fp).

        ValueError when the array cannot be a valid entry (shape, non-finite). S3 trouble is logged and
        counted (stats.errors), or DataError when the cache is required.
        """
        check_hash(audio_hash), check_fp(fp)
        if self.mode == "off":
            return
        n_mels, n_frames = self._settings.get(fp, {}).get("n_mels"), self._settings.get(fp, {}).get("n_frames")
        stored = codec.to_stored(features, n_mels=n_mels, n_frames=n_frames)
        try:
            self._store(audio_hash, fp, stored, self._budget())
        except RemoteUnavailable as exc:
            self._count(errors=1)
            if self.required:
                raise self._unavailable("put", exc) from None
        except OSError as exc:  # a local store that cannot be written
            self._count(errors=1)
            if self.required:
                raise DataError(f"feature cache {self.uri} cannot be written ({exc})") from exc
            log.warning("feature cache %s: entry not written (%s)", self.uri, exc)

    def _hash(self, path: str | Path) -> str:
        st = os.stat(path)
        memo_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        h = self._hash_memo.get(memo_key)
        if h is None:
            h = _audio_hash(path)
            if len(self._hash_memo) > 100_000:
                self._hash_memo.clear()
            self._hash_memo[memo_key] = h
        return h

    def features(self, audio_path: str | Path, feature_extractor: Any) -> np.ndarray:
        """Get-or-compute: float16 (n_chunks, n_mels, n_frames), the log-mel chunks of `audio_path`.

        float16 whether they come from the cache or were just computed (also with mode "off"), so a run sees
        the same features on a hit, on a miss and without a cache. They stay float16 (half the memory of a
        stage's encoded examples) until the model casts them to its dtype on its device (Voxtral's audio
        tower does). Read-only when they come from the cache (a view of the entry's bytes).
        A computed entry that could not be stored in the cache (S3 down, disk error) counts in
        stats.fallbacks.
        """
        if self.mode == "off":
            return codec.to_stored(_compute(audio_path, feature_extractor))
        fp = self.register(feature_extractor)
        until = self._budget()
        try:
            h = self._hash(audio_path)
        except OSError as exc:
            raise DataError(f"{audio_path}: cannot read audio ({exc})") from exc
        remote_failed: RemoteUnavailable | None = None
        try:
            arr = self._lookup(h, fp, until)
        except RemoteUnavailable as exc:
            self._count(errors=1, misses=1)
            if self.required:
                raise self._unavailable("get", exc) from None
            remote_failed, arr = exc, None
        if arr is not None:
            return arr
        stored = codec.to_stored(_compute(audio_path, feature_extractor))
        try:
            if remote_failed is None:
                self._store(h, fp, stored, until)
            elif self._tier is not None:  # S3 is down: keep the node-local copy at least
                self._tier_write(self._rel(h, fp), codec.encode(stored, audio_hash=h, fp=fp))
        except RemoteUnavailable as exc:
            self._count(errors=1)
            if self.required:
                raise self._unavailable("put", exc) from None
            remote_failed = exc
        except OSError as exc:  # local store: a cache that cannot be written still yields features
            self._count(errors=1)
            if self.required:
                raise DataError(f"feature cache {self.uri} cannot be written ({exc})") from exc
            log.warning("feature cache %s: entry not written (%s)", self.uri, exc)
            remote_failed = RemoteUnavailable(str(exc))
        if remote_failed is not None:
            self._count(fallbacks=1)
            self._warn_fallback(audio_path, remote_failed)
        return stored

    def features_many(self, audio_paths: Iterable[str | Path], feature_extractor: Any, *,
                      workers: int | None = None) -> Iterator[np.ndarray]:
        """`features()` of each path, yielded in order. Entries already on this node's disk are read by the
        caller (a thread would only add overhead to a 0.1 ms read); the others (S3 GETs, misses to compute)
        run up to `workers` (default `self.prefetch`) at once, at most 2 x workers paths ahead of the caller.

        On a fresh node this turns one S3 GET after another into parallel GETs, each with the time bound,
        fall-back and local-tier fill of `features()`. An error (unreadable audio, a required cache that is
        down) is raised at its own position, as a one-at-a-time loop would; what was started ahead of it is
        cancelled or awaited, never left running.
        """
        workers = self.prefetch if workers is None else workers
        if workers <= 1 or self.mode == "off":
            for path in audio_paths:
                yield self.features(path, feature_extractor)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool: ThreadPoolExecutor | None = None
        pending: collections.deque = collections.deque()  # (path, future or None: read by the caller)

        def admit(path: str | Path) -> None:
            nonlocal pool
            if self._on_disk(path, feature_extractor):
                pending.append((path, None))
                return
            if pool is None:
                if self.remote is not None:
                    try:
                        self.remote.connect()  # one S3 client for all the threads, not one each
                    except RemoteUnavailable:
                        pass  # marked down: each features() call falls back (or raises when required)
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sllm-cache")
            pending.append((path, pool.submit(self.features, path, feature_extractor)))

        paths = iter(audio_paths)
        try:
            for path in paths:
                admit(path)
                if len(pending) >= 2 * workers:
                    break
            while pending:
                path, future = pending.popleft()
                following = next(paths, None)
                if following is not None:
                    admit(following)
                yield self.features(path, feature_extractor) if future is None else future.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _on_disk(self, audio_path: str | Path, feature_extractor: Any) -> bool:
        """Whether the entry of `audio_path` is a file in the local store or tier (not checked: a guess for
        `features_many`, which reads it in the caller's thread; `features()` still checks what it reads)."""
        if self.local is None:
            return False
        try:
            rel = self._rel(self._hash(audio_path), self.register(feature_extractor))
        except (OSError, ValueError):
            return False  # features() reports it in its place
        return os.path.exists(self.local.path(rel))

    def _warn_fallback(self, audio_path: str | Path, reason: Exception) -> None:
        """A warning per outage, not per clip: at most one every FALLBACK_WARN_S seconds."""
        now = time.monotonic()
        if now - self._last_fallback_warning >= FALLBACK_WARN_S:
            self._last_fallback_warning = now
            log.warning("feature cache %s not used for %s (%s): features computed instead "
                        "(%d fallbacks so far; the next ones are logged at debug level for %.0f s)",
                        self.uri, audio_path, reason, self.stats.fallbacks, FALLBACK_WARN_S)
        else:
            log.debug("feature cache %s not used for %s (%s)", self.uri, audio_path, reason)

    # ------------------------------------------------------------------------------------------ manifests

    def _manifest_rel(self, dataset: str, fp: str) -> str:
        check_fp(fp)
        if not dataset or "/" in dataset or "\\" in dataset or dataset.startswith(".") or "\0" in dataset:
            raise ValueError(f"dataset name {dataset!r}: use a plain name (no '/', not starting with '.')")
        return f"{fp}/{MANIFESTS}/{dataset}.json"

    def write_manifest(self, dataset: str, fp: str, rows: list[dict]) -> str:
        """Write the dataset's rows ({audio_path, audio_hash, duration_s, n_chunks, frames}) atomically
        to <root>/<fp>/manifests/<dataset>.json; returns its path/uri."""
        rel = self._manifest_rel(dataset, fp)
        where = (f"s3://{self.remote.bucket}/{self.remote.key(rel)}" if self.remote is not None
                 else str(self.local.path(rel)))
        if self.mode != "readwrite":
            if self.mode == "readonly":
                raise DataError(f"feature cache {self.uri} is readonly: manifest {dataset} not written")
            return where
        doc = {"dataset": dataset, "fingerprint": fp, "settings": self._settings.get(fp),
               "created_unix": int(time.time()), "rows": list(rows)}
        data = json.dumps(doc, indent=1, default=str).encode()
        if self.remote is None:
            self.local.write(rel, data)
        else:
            try:
                self.remote.write(rel, data)
            except RemoteUnavailable as exc:
                self._count(errors=1)
                raise self._unavailable("write manifest", exc) from None
        return where

    def read_manifest(self, dataset: str, fp: str) -> list[dict] | None:
        """The rows of a manifest, or None when there is none (or S3 is unavailable and not required)."""
        rel = self._manifest_rel(dataset, fp)
        if self.mode == "off":
            return None
        try:
            data = self._remote_read(rel) if self.remote is not None else self.local.read(rel)
        except RemoteUnavailable as exc:
            self._count(errors=1)
            if self.required:
                raise self._unavailable("read manifest", exc) from None
            return None
        if data is None:
            return None
        try:
            doc = json.loads(data)
            rows = doc["rows"]
            if not isinstance(rows, list):
                raise TypeError("rows is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"feature cache {self.uri}: manifest {rel} is invalid ({exc})") from exc
        return rows

    # ------------------------------------------------------------------------------------------ admin

    def _admin(self, what: str, fn):
        """Run an administrative listing/deletion; S3 trouble is a DataError (there is nothing to fall back to)."""
        try:
            return fn()
        except RemoteUnavailable as exc:
            self._count(errors=1)
            raise DataError(f"feature cache {self.uri}: {what} failed ({exc})") from None

    def fingerprints(self) -> list[str]:
        """The fingerprints present in the store."""
        if self.mode == "off":
            return []
        if self.remote is None:
            return [d for d in self.local.list_dirs() if FP_RE.match(d)]
        items = self._admin("listing fingerprints", lambda: list(self.remote.list("", delimiter="/")))
        return sorted({k.rstrip("/") for k, _ in items if FP_RE.match(k.rstrip("/"))})

    def _entry_files(self, fp: str) -> Iterator[tuple[str, str, int]]:
        """(audio hash, relative key, size) of the entries stored under fp (temp files never show)."""
        check_fp(fp)
        if self.remote is None:
            it: Iterator[tuple[str, int]] = ((rel, size) for rel, size, _ in self.local.walk(fp))
        else:
            it = self.remote.list(f"{fp}/")
        seen: set[str] = set()
        for rel, size in it:
            parts = rel.split("/")
            if len(parts) == 3 and parts[2].endswith(ENTRY_SUFFIX):
                h = parts[2][:-len(ENTRY_SUFFIX)]
                # a key listed twice is one entry: `rclone serve s3` can name a key twice in one listing
                # right after concurrent PUTs of it (seen in CI), and verify/gc counts must stay per entry
                if HASH_RE.match(h) and parts[1] == h[:2] and h not in seen:
                    seen.add(h)
                    yield h, rel, size

    def entries(self, fp: str) -> Iterator[str]:
        """The audio hashes that have an entry under fp."""
        if self.mode == "off":
            return iter(())
        return (h for h, _, _ in self._admin_iter(f"listing {fp}", self._entry_files(fp)))

    def _admin_iter(self, what: str, it: Iterator) -> Iterator:
        try:
            yield from it
        except RemoteUnavailable as exc:
            self._count(errors=1)
            raise DataError(f"feature cache {self.uri}: {what} failed ({exc})") from None

    def verify(self, fp: str, *, sample: int | None = None, audio_index: dict[str, str] | None = None,
               feature_extractor: Any = None, seed: int = 0) -> dict:
        """Re-read entries of fp (all, or a seeded random `sample`) and check them; with `audio_index`
        (hash -> audio path) and `feature_extractor`, also recompute and compare. Bad entries are removed
        in readwrite mode. Returns {checked, ok, corrupt, mismatched, removed}."""
        check_fp(fp)
        out = {"checked": 0, "ok": 0, "corrupt": 0, "mismatched": 0, "removed": 0}
        if self.mode == "off":
            return out
        if feature_extractor is not None:
            efp = self.register(feature_extractor)
            if efp != fp:
                raise DataError(f"feature cache {self.uri}: the extractor has fingerprint {efp}, not {fp}")
        hashes = sorted(self.entries(fp))
        if sample is not None and sample < len(hashes):
            hashes = random.Random(seed).sample(hashes, sample)
        for h in hashes:
            rel = self._rel(h, fp)
            read = (lambda: self._remote_read(rel)) if self.remote is not None else (lambda: self.local.read(rel))
            data = self._admin(f"reading {rel}", read)
            if data is None:  # removed since the listing
                continue
            out["checked"] += 1
            bad = None
            try:
                arr = self._decode(data, h, fp)
            except codec.CorruptEntry as exc:
                out["corrupt"] += 1
                bad = f"corrupt ({exc})"
            else:
                path = (audio_index or {}).get(h)
                if path is not None and feature_extractor is not None:
                    if not os.path.exists(path) or self._hash(path) != h:
                        log.warning("verify: %s is not the audio of entry %s (missing or changed); not compared", path, h)
                    else:
                        ref = codec.to_stored(_compute(path, feature_extractor))
                        if ref.shape != arr.shape or not np.allclose(
                                arr.astype(np.float32), ref.astype(np.float32), rtol=0, atol=RECOMPUTE_ATOL):
                            out["mismatched"] += 1
                            bad = "differs from the recomputed features"
            if bad is None:
                out["ok"] += 1
                continue
            log.warning("verify: entry %s/%s is %s", fp, h, bad)
            if self.mode == "readwrite":
                if self.remote is not None:
                    self._admin(f"deleting {rel}", lambda: self.remote.delete(rel))
                else:
                    self.local.delete(rel)
                if self._tier is not None:
                    self._tier.delete(rel)
                out["removed"] += 1
        return out

    def gc(self, keep: list[str]) -> dict:
        """Delete every fingerprint not in `keep` (store and local tier), and temp files older than an hour
        left by killed writers. Returns {removed_fingerprints (list), removed_entries, bytes}."""
        out: dict = {"removed_fingerprints": [], "removed_entries": 0, "bytes": 0}
        if self.mode == "off":
            return out
        if self.mode != "readwrite":
            raise DataError(f"feature cache {self.uri} is {self.mode}: gc needs readwrite")
        keep_set = set(keep)
        for fp in self.fingerprints():
            if fp in keep_set:
                continue
            if self.remote is not None:
                # one row per key (a listing may name a key twice, see _entry_files)
                objects = list(dict(self._admin(f"listing {fp}", lambda fp=fp: list(self.remote.list(f"{fp}/")))).items())
                entries = sum(1 for rel, _ in objects if rel.endswith(ENTRY_SUFFIX))
                size = sum(s for _, s in objects)
                self._admin(f"deleting {fp}", lambda objects=objects: self.remote.delete_many([r for r, _ in objects]))
            else:
                entries = sum(1 for _ in self._entry_files(fp))
                _, size = self.local.remove_tree(fp)
            out["removed_fingerprints"].append(fp)
            out["removed_entries"] += entries
            out["bytes"] += size
        if self._tier is not None:
            for fp in self._tier.list_dirs():
                if FP_RE.match(fp) and fp not in keep_set:
                    self._tier.remove_tree(fp)
        if self.local is not None:
            self.local.clean_temps()
        return out
