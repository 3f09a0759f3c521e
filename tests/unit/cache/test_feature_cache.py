"""FeatureCache without a server: a local-directory cache, and an s3:// cache over an in-process fake remote
(tier, fallbacks, required) plus the hard deadline of RemoteStore."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from sllm_lib.cache import CacheStats, FeatureCache, audio_hash, codec, fingerprint
from sllm_lib.cache.backends import RemoteStore, RemoteUnavailable, TornRead
from sllm_lib.errors import DataError

AUDIO = sorted((Path(__file__).resolve().parents[3] / "data" / "sample" / "audio").glob("*.wav"))


@pytest.fixture(scope="module")
def fe():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128)


def _reference(path, fe) -> np.ndarray:
    from sllm_lib.audio.features import load_audio, log_mel_chunks

    return log_mel_chunks(load_audio(path), fe)


def test_stats_dict():
    s = CacheStats(hits=2, corrupt=1)
    d = s.as_dict()
    assert d == {"hits": 2, "misses": 0, "local_hits": 0, "remote_hits": 0, "writes": 0, "corrupt": 1,
                 "errors": 0, "fallbacks": 0, "torn_reads": 0, "bytes_read": 0, "bytes_written": 0}


def test_local_cache_get_or_compute(tmp_path, fe):
    cache = FeatureCache(str(tmp_path / "c"))
    fp, h = fingerprint(fe), audio_hash(AUDIO[0])
    a = cache.features(AUDIO[0], fe)
    ref = _reference(AUDIO[0], fe)
    assert a.dtype == np.float16 and a.shape == ref.shape == (1, 128, 3000)
    np.testing.assert_allclose(a, ref, atol=2e-3, rtol=0)  # float16 storage
    assert cache.stats.misses == 1 and cache.stats.writes == 1 and cache.stats.hits == 0
    b = cache.features(AUDIO[0], fe)
    assert np.array_equal(a, b)  # same values on a miss and on a hit
    assert cache.stats.hits == 1 and cache.stats.local_hits == 1
    # a short clip: the padded frames' one value is not stored (a 30 s chunk would be 128 x 3000 x 2 bytes)
    assert 0 < cache.stats.bytes_read == cache.stats.bytes_written < 128 * 3000 * 2 // 4
    path = cache.key_path(h, fp)
    assert path == str(tmp_path / "c" / fp / h[:2] / f"{h}.safetensors") and Path(path).is_file()
    assert cache.fingerprints() == [fp] and list(cache.entries(fp)) == [h]
    settings = json.loads((tmp_path / "c" / fp / "settings.json").read_text())
    assert settings["fingerprint"] == fp and settings["settings"]["n_mels"] == 128
    np.testing.assert_array_equal(cache.get(h, fp), a)
    # a second instance (another process, another job) hits the same entry
    other = FeatureCache(str(tmp_path / "c"))
    np.testing.assert_array_equal(other.features(AUDIO[0], fe), a)
    assert other.stats.hits == 1 and other.stats.misses == 0


def test_put_get_and_shape_checks(tmp_path, fe):
    cache = FeatureCache(str(tmp_path))
    fp = cache.register(fe)
    h = "ab" * 32
    with pytest.raises(ValueError, match="mel bins"):
        cache.put(h, fp, np.zeros((1, 80, 3000), np.float32))
    cache.put(h, fp, np.ones((2, 128, 3000), np.float32))
    got = cache.get(h, fp)
    assert got.dtype == np.float16 and got.shape == (2, 128, 3000) and (got == 1).all()
    assert cache.get("cd" * 32, fp) is None and cache.stats.misses == 1
    # an instance that never saw the extractor checks shapes from <fp>/settings.json
    fresh = FeatureCache(str(tmp_path))
    assert fresh._expected(fp) == (128, 3000)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip"])
def test_corrupt_local_entry_is_recomputed(tmp_path, fe, caplog, damage):
    cache = FeatureCache(str(tmp_path))
    first = cache.features(AUDIO[1], fe)
    path = Path(cache.key_path(audio_hash(AUDIO[1]), fingerprint(fe)))
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not an entry" * 10)
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    if damage == "flip":  # same length: only a checksum sees it, computed once per entry and process (a new one)
        cache = FeatureCache(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"):
        again = cache.features(AUDIO[1], fe)
    assert np.array_equal(again, first)
    assert cache.stats.corrupt == 1 and cache.stats.writes == (1 if damage == "flip" else 2)
    assert "corrupt entry" in caplog.text
    codec.decode(path.read_bytes(), audio_hash=audio_hash(AUDIO[1]), fp=fingerprint(fe))  # rewritten valid


def test_verified_entry_read_again_checks_structure_not_checksum(tmp_path, fe, monkeypatch):
    """An entry this process wrote or fully checked is not hashed again, but every read still checks the header,
    the key and the exact length: a torn, truncated or padded file, or another entry renamed over it, is a miss."""
    import hashlib

    cache = FeatureCache(str(tmp_path))
    fp, h = cache.register(fe), audio_hash(AUDIO[0])
    first = cache.features(AUDIO[0], fe)  # written: verified
    path = Path(cache.key_path(h, fp))
    good = path.read_bytes()
    hashed = []
    real_sha = hashlib.sha256
    big = len(good) - 8 - int.from_bytes(good[:8], "little")  # an entry's data (keys hash small documents too)
    monkeypatch.setattr(codec.hashlib, "sha256", lambda b=b"": (len(b) >= big and hashed.append(len(b))) or real_sha(b))
    for _ in range(3):
        np.testing.assert_array_equal(cache.features(AUDIO[0], fe), first)
    assert hashed == [] and cache.stats.local_hits == 3
    reader = FeatureCache(str(tmp_path))  # another process: the first read is the full check, then none
    reader.features(AUDIO[0], fe), reader.features(AUDIO[0], fe)
    assert hashed == [len(good) - 8 - int.from_bytes(good[:8], "little")]

    for bad in (good[:-2], good + b"\0\0", good[:len(good) // 2]):
        path.write_bytes(bad)
        before = cache.stats.corrupt
        np.testing.assert_array_equal(cache.features(AUDIO[0], fe), first)
        assert cache.stats.corrupt == before + 1 and path.read_bytes() == good  # dropped and rewritten
    other = cache.features(AUDIO[1], fe)
    path.write_bytes(Path(cache.key_path(audio_hash(AUDIO[1]), fp)).read_bytes())  # valid bytes, wrong key
    np.testing.assert_array_equal(cache.features(AUDIO[0], fe), first)
    assert not np.array_equal(other, first) and path.read_bytes() == good
    # a byte flipped on disk after the check is the full check's to find: `sllm cache verify`
    flipped = bytearray(good)
    flipped[-7] ^= 0x01
    path.write_bytes(bytes(flipped))
    assert cache.verify(fp)["corrupt"] == 1 and not path.exists()


def test_readonly_and_off(tmp_path, fe):
    ro = FeatureCache(str(tmp_path), mode="readonly")
    ro.features(AUDIO[0], fe)
    assert not any(tmp_path.rglob("*.safetensors")) and ro.stats.writes == 0
    with pytest.raises(DataError, match="readonly"):
        ro.gc([])
    off = FeatureCache(str(tmp_path), mode="off")
    out = off.features(AUDIO[0], fe)
    ref = _reference(AUDIO[0], fe)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, ref.astype(np.float16))
    assert off.get(audio_hash(AUDIO[0]), fingerprint(fe)) is None and off.stats.as_dict() == CacheStats().as_dict()
    assert not any(tmp_path.rglob("*"))
    with pytest.raises(ValueError):
        FeatureCache(str(tmp_path), mode="sometimes")
    with pytest.raises(DataError, match="unsupported"):
        FeatureCache("gs://bucket/x")


def test_manifest_round_trip(tmp_path, fe):
    cache = FeatureCache(str(tmp_path))
    fp = cache.register(fe)
    rows = [{"audio_path": str(AUDIO[0]), "audio_hash": audio_hash(AUDIO[0]), "duration_s": 3.2, "n_chunks": 1,
             "frames": 3000}]
    where = cache.write_manifest("asr_train", fp, rows)
    assert where == str(tmp_path / fp / "manifests" / "asr_train.json")
    assert cache.read_manifest("asr_train", fp) == rows
    assert cache.read_manifest("other", fp) is None
    assert list(cache.entries(fp)) == []  # manifests are not entries
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            cache.write_manifest(bad, fp, rows)
    assert not list(tmp_path.rglob(".*.tmp"))


def test_verify_and_gc_local(tmp_path, fe):
    from transformers import WhisperFeatureExtractor

    cache = FeatureCache(str(tmp_path))
    fp = cache.register(fe)
    for p in AUDIO[:4]:
        cache.features(p, fe)
    index = {audio_hash(p): str(p) for p in AUDIO[:4]}
    assert cache.verify(fp, audio_index=index, feature_extractor=fe) == \
        {"checked": 4, "ok": 4, "corrupt": 0, "mismatched": 0, "removed": 0}
    h0, h1 = audio_hash(AUDIO[0]), audio_hash(AUDIO[1])
    Path(cache.key_path(h0, fp)).write_bytes(b"junk")
    cache.put(h1, fp, np.zeros((1, 128, 3000), np.float32))  # valid entry, wrong values
    assert cache.verify(fp, sample=2, seed=3)["checked"] == 2
    res = cache.verify(fp, audio_index=index, feature_extractor=fe)
    assert res == {"checked": 4, "ok": 2, "corrupt": 1, "mismatched": 1, "removed": 2}
    assert sorted(cache.entries(fp)) == sorted(set(index) - {h0, h1})
    fe80 = WhisperFeatureExtractor(feature_size=80)
    cache.features(AUDIO[0], fe80)
    fp80 = fingerprint(fe80)
    assert sorted(cache.fingerprints()) == sorted([fp, fp80])
    with pytest.raises(DataError, match="fingerprint"):
        cache.verify(fp, feature_extractor=fe80)
    size80 = sum(f.stat().st_size for f in (tmp_path / fp80).rglob("*") if f.is_file())  # entries + settings
    out = cache.gc(keep=[fp])
    assert out["removed_fingerprints"] == [fp80] and out["removed_entries"] == 1 and out["bytes"] == size80 > 0
    assert cache.fingerprints() == [fp] and not (tmp_path / fp80).exists()


# ------------------------------------------------------------------------------------------ s3:// over a fake


class FakeRemote:
    """The RemoteStore surface FeatureCache uses, in memory; `down` makes every call fail."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.down = False
        self.calls = 0
        self.bucket, self.prefix = "bucket", "pre"

    def key(self, rel):
        return f"{self.prefix}/{rel}"

    def budget(self):
        return time.monotonic() + 5.0

    def _check(self):
        self.calls += 1
        if self.down:
            raise RemoteUnavailable("fake outage")

    def connect(self):
        self._check()

    def read(self, rel, until=None):
        self._check()
        return self.objects.get(rel)

    def write(self, rel, data, until=None):
        self._check()
        self.objects[rel] = bytes(data)

    def delete(self, rel, until=None):
        self._check()
        self.objects.pop(rel, None)

    def list(self, rel_prefix, *, delimiter=None):
        self._check()
        if delimiter:
            return iter(sorted({(k[len(rel_prefix):].split("/")[0] + "/", 0) for k in self.objects}))
        return iter([(k, len(v)) for k, v in sorted(self.objects.items()) if k.startswith(rel_prefix)])

    def delete_many(self, rels):
        self._check()
        for r in rels:
            self.objects.pop(r, None)


def _s3_cache(tmp_path, **kw) -> tuple[FeatureCache, FakeRemote]:
    cache = FeatureCache("s3://bucket/pre", **kw)
    cache.remote = fake = FakeRemote()
    return cache, fake


def test_features_many_reads_ahead_in_order_and_raises_in_place(tmp_path, fe):
    writer, fake = _s3_cache(tmp_path)
    want = [writer.features(p, fe) for p in AUDIO[:6]]
    node = FeatureCache("s3://bucket/pre", local_dir=tmp_path / "tier", prefetch=4)
    node.remote = fake
    got = list(node.features_many(AUDIO[:6], fe))  # a fresh node: every entry fetched by the pool
    assert len(got) == 6 and all(np.array_equal(g, w) for g, w in zip(got, want))
    assert node.stats.remote_hits == 6 and len(list((tmp_path / "tier").rglob("*.safetensors"))) == 6
    fake.down = True  # now on this node's disk: read by the caller, S3 not asked
    calls = fake.calls
    assert all(np.array_equal(g, w) for g, w in zip(node.features_many(AUDIO[:6], fe), want))
    assert node.stats.local_hits == 6 and fake.calls == calls
    fake.down = False
    paths = [*AUDIO[6:8], tmp_path / "missing.wav", *AUDIO[8:10]]
    it = node.features_many(paths, fe)
    assert next(it).shape[1] == 128 and next(it).shape[1] == 128
    with pytest.raises(DataError, match="missing.wav"):
        next(it)  # the bad path fails in its own place, after the ones before it


def test_tier_in_front_of_remote(tmp_path, fe):
    writer, fake = _s3_cache(tmp_path, local_dir=tmp_path / "tier-a")
    ref = writer.features(AUDIO[0], fe)
    h, fp = audio_hash(AUDIO[0]), fingerprint(fe)
    rel = f"{fp}/{h[:2]}/{h}.safetensors"
    assert rel in fake.objects and (tmp_path / "tier-a" / rel).is_file()
    assert writer.key_path(h, fp) == f"s3://bucket/pre/{rel}"
    reader = FeatureCache("s3://bucket/pre", local_dir=tmp_path / "tier-b")
    reader.remote = fake
    np.testing.assert_array_equal(reader.features(AUDIO[0], fe), ref)
    assert reader.stats.remote_hits == 1 and (tmp_path / "tier-b" / rel).is_file()
    fake.down = True  # the tier answers without S3
    np.testing.assert_array_equal(reader.features(AUDIO[0], fe), ref)
    assert reader.stats.local_hits == 1 and reader.stats.fallbacks == 0


def test_tier_eviction_under_a_tiny_cap(tmp_path, fe):
    probe = FeatureCache(str(tmp_path / "probe"))  # the entries' sizes (a short clip's trailing fill is not stored)
    sizes = [len(Path(probe.key_path(audio_hash(p), probe.register(fe))).read_bytes())
             for p in AUDIO[:5] if probe.features(p, fe) is not None]
    cap = 2.5 * max(sizes)
    cache, fake = _s3_cache(tmp_path, local_dir=tmp_path / "tier", local_cap_gb=cap / 1024 ** 3)
    for p in AUDIO[:5]:
        cache.features(p, fe)
    tier_files = list((tmp_path / "tier").rglob("*.safetensors"))
    assert 1 <= len(tier_files) < 5 and len([k for k in fake.objects if k.endswith(".safetensors")]) == 5
    assert sum(f.stat().st_size for f in tier_files) <= cap
    # the most recent is kept; the evicted ones are still remote hits
    assert cache.get(audio_hash(AUDIO[4]), fingerprint(fe)) is not None and cache.stats.local_hits == 1
    assert cache.get(audio_hash(AUDIO[0]), fingerprint(fe)) is not None and cache.stats.remote_hits == 1


def test_remote_down_falls_back_or_raises(tmp_path, fe, caplog):
    cache, fake = _s3_cache(tmp_path)
    fake.down = True
    with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"):
        out = cache.features(AUDIO[2], fe)
    assert "features computed instead" in caplog.text
    np.testing.assert_allclose(out, _reference(AUDIO[2], fe), atol=2e-3, rtol=0)
    assert cache.stats.fallbacks == 1 and cache.stats.errors == 1 and cache.stats.writes == 0
    assert cache.get(audio_hash(AUDIO[2]), fingerprint(fe)) is None
    cache.put(audio_hash(AUDIO[2]), fingerprint(fe), out)  # logged and counted, not raised
    strict, fake2 = _s3_cache(tmp_path, required=True)
    fake2.down = True
    with pytest.raises(DataError, match="s3://bucket/pre"):
        strict.features(AUDIO[2], fe)
    with pytest.raises(DataError, match="s3://bucket/pre"):
        strict.get(audio_hash(AUDIO[2]), fingerprint(fe))
    with pytest.raises(DataError, match="listing"):
        list(strict.entries(fingerprint(fe)))


def test_corrupt_remote_entry_is_replaced(tmp_path, fe, caplog):
    cache, fake = _s3_cache(tmp_path)
    good = cache.features(AUDIO[3], fe)
    h, fp = audio_hash(AUDIO[3]), fingerprint(fe)
    rel = f"{fp}/{h[:2]}/{h}.safetensors"
    fake.objects[rel] = fake.objects[rel][:1000]
    reader, _ = _s3_cache(tmp_path)
    reader.remote = fake
    with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"):
        np.testing.assert_array_equal(reader.features(AUDIO[3], fe), good)
    assert reader.stats.corrupt == 1 and reader.stats.writes == 1 and "corrupt" in caplog.text
    codec.decode(fake.objects[rel], audio_hash=h, fp=fp)
    ro, _ = _s3_cache(tmp_path, mode="readonly")
    ro.remote = fake
    fake.objects[rel] = b"junk"
    ro.features(AUDIO[3], fe)
    assert fake.objects[rel] == b"junk" and ro.stats.corrupt == 1  # readonly never deletes or writes


def test_remote_store_deadline_and_cooldown(monkeypatch, caplog):
    """A call that never answers returns at the deadline; the next ones fail at once during the cool-down."""
    import fsspec.asyn

    store = RemoteStore("s3://bucket/p", timeout_s=1.0, cooldown_s=30.0)

    class _FS:
        loop = fsspec.asyn.get_loop()

    monkeypatch.setattr(store, "_fs", lambda: _FS())
    started = []

    async def never(fs):
        started.append(1)
        await asyncio.sleep(3600)

    t = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"), pytest.raises(RemoteUnavailable, match="no answer"):
        store._run("get x", never)
    assert time.monotonic() - t < 1.5 and "unreachable" in caplog.text
    t = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="marked unreachable"):
        store._run("get y", never)
    assert time.monotonic() - t < 0.1 and len(started) == 1
    store.mark_up()

    async def missing(fs):
        raise FileNotFoundError("x")

    assert store._run("get z", missing, missing_ok=True) is None and store.available()
    with pytest.raises(RemoteUnavailable, match="not found"):
        store._run("put z", missing)


def test_credentials_never_in_repr_or_errors(tmp_path, monkeypatch):
    store = RemoteStore("s3://bucket/p", storage_options={"key": "AKIASECRETKEYID", "secret": "topsecretvalue"},
                        timeout_s=1.0)

    async def fail(fs):
        raise RuntimeError("boom")

    import fsspec.asyn

    class _FS:
        loop = fsspec.asyn.get_loop()

    monkeypatch.setattr(store, "_fs", lambda: _FS())
    with pytest.raises(RemoteUnavailable) as err:
        store._run("get", fail)
    text = repr(store) + str(err.value) + repr(FeatureCache("s3://bucket/p", storage_options={"secret": "x1y2"}))
    assert "topsecretvalue" not in text and "AKIASECRETKEYID" not in text and "x1y2" not in text


def test_one_call_shares_one_budget(monkeypatch):
    """All S3 operations of one cache call share the deadline: a slow get leaves less for the put, and a
    spent budget skips S3 at once without marking it down."""
    import fsspec.asyn

    store = RemoteStore("s3://bucket/p", timeout_s=2.0)  # deadline 1.5 s

    class _FS:
        loop = fsspec.asyn.get_loop()

    monkeypatch.setattr(store, "_fs", lambda: _FS())

    async def slow(fs):
        await asyncio.sleep(1.0)
        return b"x"

    async def never(fs):
        await asyncio.sleep(3600)

    until = store.budget()
    t = time.monotonic()
    assert store._run("get", slow, until=until) == b"x"
    with pytest.raises(RemoteUnavailable, match="no answer"):
        store._run("put", never, until=until)
    assert time.monotonic() - t < 1.5 + 0.3
    store.mark_up()
    with pytest.raises(RemoteUnavailable, match="budget"):
        store._run("put", never, until=time.monotonic() - 1)
    assert store.available()  # a spent budget is no outage


# ------------------------------------------------------------------------------------------ a key in flux


def test_torn_body_is_a_torn_read_not_an_outage(monkeypatch):
    """A GET whose body ends before its Content-Length (rclone serving a key that a PUT is replacing) is one
    bad read: TornRead, and the remote stays up. The same error on a put is an outage as before."""
    import fsspec.asyn
    from aiohttp import ClientPayloadError

    store = RemoteStore("s3://bucket/p", timeout_s=2.0)

    class _FS:
        loop = fsspec.asyn.get_loop()

        async def _cat_file(self, path):
            raise ClientPayloadError("Response payload is not completed: received 120 of 6144328 bytes")

        async def _pipe_file(self, path, data, chunksize=None):
            raise ClientPayloadError("broken pipe")

    monkeypatch.setattr(store, "_fs", lambda: _FS())
    with pytest.raises(TornRead, match="received 120 of 6144328"):
        store.read("fp/ab/abc.safetensors")
    assert store.available() and isinstance(TornRead("x"), RemoteUnavailable)
    with pytest.raises(RemoteUnavailable) as err:
        store.write("fp/ab/abc.safetensors", b"x")
    assert not isinstance(err.value, TornRead) and not store.available()


class FluxRemote(FakeRemote):
    """A FakeRemote whose next reads of a key are scripted: TornRead, or these bytes instead of the object."""

    def __init__(self):
        super().__init__()
        self.script: dict[str, list] = {}

    def read(self, rel, until=None):
        self._check()
        queue = self.script.get(rel)
        if queue:
            step = queue.pop(0)
            if step is TornRead:
                raise TornRead(f"get {rel}: ClientPayloadError: Response payload is not completed")
            return step
        return self.objects.get(rel)


def _flux_cache(tmp_path, fe, **kw) -> tuple[FeatureCache, FluxRemote, str, str, np.ndarray]:
    cache = FeatureCache("s3://bucket/pre", **kw)
    cache.remote = fake = FluxRemote()
    want = cache.features(AUDIO[0], fe)
    h, fp = audio_hash(AUDIO[0]), fingerprint(fe)
    cache.stats = CacheStats()
    return cache, fake, h, fp, want


def test_torn_reads_are_retried_then_a_miss(tmp_path, fe):
    cache, fake, h, fp, want = _flux_cache(tmp_path, fe)
    rel = f"{fp}/{h[:2]}/{h}.safetensors"
    fake.script[rel] = [TornRead, TornRead]
    np.testing.assert_array_equal(cache.get(h, fp), want)  # the third try is whole
    assert cache.stats.torn_reads == 2 and cache.stats.remote_hits == 1 and cache.stats.errors == 0
    fake.script[rel] = [TornRead] * 10
    t = time.monotonic()
    assert cache.get(h, fp) is None  # every try torn: a miss, bounded (3 pauses, < 1 s)
    assert time.monotonic() - t < 1.5
    assert cache.stats.torn_reads == 2 + 4 and cache.stats.misses == 1 and cache.stats.errors == 0
    assert rel in fake.objects and len(fake.script[rel]) == 10 - 4  # nothing deleted; 4 tries
    fake.script[rel] = []
    np.testing.assert_array_equal(cache.get(h, fp), want)  # the remote was never marked down
    required, fake2, h2, fp2, want2 = _flux_cache(tmp_path, fe, required=True)
    fake2.script[rel] = [TornRead] * 10
    assert required.get(h2, fp2) is None  # a key in flux is no outage, even for a required cache


def test_entry_read_mid_replacement_is_not_dropped(tmp_path, fe, caplog):
    """An object that fails its check but reads back whole (or different) a moment later was being replaced:
    never counted corrupt, never deleted. Only bytes that read back identical and bad are corrupt."""
    cache, fake, h, fp, want = _flux_cache(tmp_path, fe)
    rel = f"{fp}/{h[:2]}/{h}.safetensors"
    whole = fake.objects[rel]
    fake.script[rel] = [whole[: len(whole) // 2]]  # first read: a prefix; second: whole
    with caplog.at_level(logging.INFO, logger="sllm_lib.cache"):
        np.testing.assert_array_equal(cache.get(h, fp), want)
    assert "changed while it was read" in caplog.text
    assert cache.stats.corrupt == 0 and cache.stats.torn_reads == 1 and cache.stats.remote_hits == 1
    fake.script[rel] = [whole[:1000], whole[:2000]]  # two different prefixes: still in flux, a miss
    assert cache.get(h, fp) is None and rel in fake.objects and cache.stats.corrupt == 0
    fake.objects[rel] = whole[:1000]  # stable and bad: corrupt, dropped
    assert cache.get(h, fp) is None and rel not in fake.objects and cache.stats.corrupt == 1


class _EchoingRemote(FakeRemote):
    """A server whose listing names every key twice (as `rclone serve s3` did once right after concurrent PUTs)."""

    def list(self, rel_prefix, *, delimiter=None):
        rows = list(super().list(rel_prefix, delimiter=delimiter))
        return iter(rows if delimiter else [r for row in rows for r in (row, row)])


def test_a_key_listed_twice_is_one_entry_for_verify_and_gc(tmp_path, fe):
    cache = FeatureCache("s3://bucket/pre")
    cache.remote = fake = _EchoingRemote()
    for p in AUDIO[:3]:
        cache.features(p, fe)
    fp = fingerprint(fe)
    assert sorted(cache.entries(fp)) == sorted({audio_hash(p) for p in AUDIO[:3]})
    assert cache.verify(fp) == {"checked": 3, "ok": 3, "corrupt": 0, "mismatched": 0, "removed": 0}
    size = sum(len(v) for k, v in fake.objects.items() if k.startswith(f"{fp}/"))
    out = cache.gc(keep=[])
    assert out["removed_fingerprints"] == [fp] and out["removed_entries"] == 3 and out["bytes"] == size
    assert not [k for k in fake.objects if k.startswith(f"{fp}/")]
