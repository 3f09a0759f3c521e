"""The shared feature cache against real local S3 servers (`rclone serve s3` on disk, `moto_server` in memory).

Covers: round trip equal to computed features on both servers, killed and concurrent builders, a response body
cut short (one key, not an outage), a server that is down or hung (every call bounded), corrupt objects, the
node-local tier, verify() and gc().
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sllm_lib.cache import FeatureCache, audio_hash, codec, fingerprint
from sllm_lib.errors import DataError

pytestmark = [pytest.mark.s3, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
AUDIO = sorted((REPO / "data" / "sample" / "audio").glob("*.wav"))
BOUND_S = 10.0  # the promise: S3 trouble never blocks a cache call longer than this


@pytest.fixture(scope="module")
def fe():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128)  # built locally, no hub download


def _cache(server, uri: str, **kw) -> FeatureCache:
    return FeatureCache(uri, endpoint_url=server.endpoint_url, storage_options=server.storage_options, **kw)


def _reference(path, fe) -> np.ndarray:
    from sllm_lib.audio.features import load_audio, log_mel_chunks

    return log_mel_chunks(load_audio(path), fe)


def _objects(server, uri: str) -> dict[str, bytes]:
    """Every visible object under uri (relative key -> bytes), read with plain boto3."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    client = server.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _assert_all_entries_valid(server, uri: str, n_mels: int = 128) -> int:
    n = 0
    for rel, data in _objects(server, uri).items():
        if not rel.endswith(".safetensors"):
            continue
        fp, _, name = rel.split("/")
        codec.decode(data, audio_hash=name[:-len(".safetensors")], fp=fp, n_mels=n_mels, n_frames=3000)
        n += 1
    return n


def _rel(h: str, fp: str) -> str:
    return f"{fp}/{h[:2]}/{h}.safetensors"


def test_round_trip(s3_server, fe, tmp_path):
    uri = s3_server.new_prefix("roundtrip")
    builder = _cache(s3_server, uri)
    fp = fingerprint(fe)
    wavs = AUDIO[:4]
    built = [builder.features(p, fe) for p in wavs]
    for p, got in zip(wavs, built):
        ref = _reference(p, fe)
        assert got.dtype == np.float16 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=2e-3, rtol=0)
    assert builder.stats.misses == 4 and builder.stats.writes == 4 and builder.stats.errors == 0
    # another node: no local tier, every lookup is a remote hit with identical values
    node = _cache(s3_server, uri)
    for p, want in zip(wavs, built):
        np.testing.assert_array_equal(node.features(p, fe), want)
    assert node.stats.remote_hits == 4 and node.stats.misses == 0
    assert node.stats.bytes_read == builder.stats.bytes_written > 0  # what was stored (trailing fill not)
    objects = _objects(s3_server, uri)
    assert {_rel(audio_hash(p), fp) for p in wavs} | {f"{fp}/settings.json"} == set(objects)
    h = audio_hash(wavs[0])
    assert node.key_path(h, fp) == f"{uri}/{_rel(h, fp)}"
    assert node.fingerprints() == [fp] and sorted(node.entries(fp)) == sorted(audio_hash(p) for p in wavs)
    rows = [{"audio_path": str(p), "audio_hash": audio_hash(p), "duration_s": 1.0, "n_chunks": 1, "frames": 3000}
            for p in wavs]
    assert builder.write_manifest("asr_sample", fp, rows) == f"{uri}/{fp}/manifests/asr_sample.json"
    assert node.read_manifest("asr_sample", fp) == rows and node.read_manifest("nope", fp) is None
    assert sorted(node.entries(fp)) == sorted(audio_hash(p) for p in wavs)  # manifests are not entries


_KILLED_BUILDER = r"""
import asyncio.selector_events, os, sys, time, numpy as np
from sllm_lib.cache import FeatureCache
endpoint, uri, fp = sys.argv[1:4]
HOLD = [False]
write = asyncio.selector_events._SelectorSocketTransport.write
def write_then_hold(self, data):  # the test's hook: stop dead with a request body half sent
    write(self, data)
    self.sent = getattr(self, "sent", 0) + len(data)
    if HOLD[0] and self.sent > 8_000_000:
        print("midbody", flush=True)
        time.sleep(60)  # the rest of the body stays in this process until the SIGKILL
asyncio.selector_events._SelectorSocketTransport.write = write_then_hold
cache = FeatureCache(uri, endpoint_url=endpoint, required=True,
                     storage_options={"key": os.environ["T_KEY"], "secret": os.environ["T_SECRET"]})
i = 0
while True:
    HOLD[0] = i >= 2
    # ~25 MB entries, far above a socket buffer (random: a constant array would store one frame)
    arr = np.random.default_rng(i).standard_normal((32, 128, 3000)).astype(np.float32)
    cache.put(f"{i:064x}", fp, arr)
    print("done", i, flush=True)
    i += 1
"""


def _spawn(script: str, server, *args: str) -> subprocess.Popen:
    env = {**os.environ, "T_KEY": server.key, "T_SECRET": server.secret, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", script, server.endpoint_url, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def test_sigkilled_builder_leaves_no_partial_object(s3_server):
    """SIGKILL with a PutObject body half sent: nothing becomes visible; every visible object is whole."""
    uri = s3_server.new_prefix("killed")
    fp = "00000000000000aa"
    proc = _spawn(_KILLED_BUILDER, s3_server, uri, fp)
    try:
        while True:  # two whole entries, then the third upload stops half-way and is killed there
            line = proc.stdout.readline()
            assert line, f"builder died: {proc.stderr.read()[-2000:]}"
            if line.startswith("midbody"):
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close(), proc.stderr.close()
    time.sleep(0.5)  # let the server notice the broken upload
    n = _assert_all_entries_valid(s3_server, uri)
    assert n == 2 and f"{2:064x}" not in set(_cache(s3_server, uri).entries(fp))
    cache = _cache(s3_server, uri)
    res = cache.verify(fp)
    assert res["checked"] == n and res["ok"] == n and res["corrupt"] == 0
    if s3_server.kind == "rclone":  # rclone receives into a hidden temp file, removed on the broken upload
        folder = s3_server.dir / "data" / uri[len("s3://"):]
        leftovers = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert len(leftovers) == n
        assert "Rcat failed" in s3_server.tail(100_000)  # rclone saw the cut upload (and dropped its temp file)
        assert not list(folder.rglob(".rclone_temp_put_*"))


_CONCURRENT_BUILDER = r"""
import os, sys, time, numpy as np
from transformers import WhisperFeatureExtractor
from sllm_lib.cache import FeatureCache
endpoint, uri, go, *wavs = sys.argv[1:]
fe = WhisperFeatureExtractor(feature_size=128)
# a generous call bound: this test is about torn entries, not speed (2 busy builders + a reader on 2 cores)
cache = FeatureCache(uri, endpoint_url=endpoint, required=True, timeout_s=60.0,
                     storage_options={"key": os.environ["T_KEY"], "secret": os.environ["T_SECRET"]})
fp = cache.register(fe)
while not os.path.exists(go):
    time.sleep(0.01)
for _ in range(2):
    for w in wavs:
        cache.features(w, fe)
for r in range(3):  # the same large keys again and again, identical bytes from both builders
    for k in range(4):
        # a ramp over the frames: nothing to trim, the whole 12 MB is stored
        ramp = np.linspace(0, 1, 3000, dtype=np.float32)
        cache.put(f"{k:064x}", fp, np.full((8, 128, 3000), k / 4, np.float32) + ramp)
print(cache.stats.as_dict(), flush=True)
"""


def test_concurrent_builders_same_keys(rclone_s3, fe, tmp_path):
    server = rclone_s3
    uri = server.new_prefix("concurrent")
    go = tmp_path / "go"
    wavs = [str(p) for p in AUDIO[:8]]
    procs = [_spawn(_CONCURRENT_BUILDER, server, uri, str(go), *wavs) for _ in range(2)]
    try:
        time.sleep(3.0)  # both have imported transformers and wait on the flag
        go.touch()
        reader = _cache(server, uri, timeout_s=60.0)
        fp = fingerprint(fe)
        ramp = np.linspace(0, 1, 3000, dtype=np.float32)
        want = [np.full((8, 128, 3000), k / 4, np.float32) + ramp for k in range(4)]
        want = [w.astype(np.float16) for w in want]
        while any(p.poll() is None for p in procs):  # readers never see a torn entry while both write
            for k in range(4):
                got = reader.get(f"{k:064x}", fp)
                assert got is None or np.array_equal(got, want[k])
            time.sleep(0.05)  # read continuously without starving the two writers of the 2 cores
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert reader.stats.corrupt == 0 and reader.stats.errors == 0
    assert _assert_all_entries_valid(server, uri) == 8 + 4
    check = _cache(server, uri)
    index = {audio_hash(w): w for w in wavs}
    res = check.verify(fp, audio_index=index, feature_extractor=fe)
    assert res == {"checked": 12, "ok": 12, "corrupt": 0, "mismatched": 0, "removed": 0}


class _CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a real S3 server that cuts the body of the next `cut(n)` large
    responses after 120 bytes and closes the connection: what a client sees when `rclone serve s3` loses the
    file of a GET under a concurrent PUT of the same key ("received 120 of N bytes"). Responses are framed by
    Content-Length (all this server sends); everything else is relayed byte for byte."""

    def __init__(self, upstream_port: int) -> None:
        import socket
        import threading

        self.upstream_port = upstream_port
        self.to_cut = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut(self, n: int) -> None:
        with self._lock:
            self.to_cut = n

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)

    def _take_cut(self) -> bool:
        with self._lock:
            if self.to_cut > 0:
                self.to_cut -= 1
                self.cuts += 1
                return True
            return False

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def _responses(self, upstream, client) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length > 10_000 and self._take_cut():  # an entry, not a listing or settings
                    while len(buf) < 120:
                        buf += upstream.recv(65536)
                    client.sendall(head + b"\r\n\r\n" + buf[:120])
                    return  # the connection closes with the body cut short
                client.sendall(head + b"\r\n\r\n")
                while length > 0:
                    if not buf:
                        buf = upstream.recv(65536)
                        if not buf:
                            return
                    chunk, buf = buf[:length], buf[length:]
                    client.sendall(chunk)
                    length -= len(chunk)
        except OSError:
            pass
        finally:
            for s in (upstream, client):
                try:
                    s.shutdown(2)
                except OSError:
                    pass
                s.close()


def test_truncated_body_is_retried_not_an_outage(rclone_s3, fe, caplog):
    """A GET whose body ends early (the CI failure of a concurrent same-key build: "received 120 of 6144328
    bytes") is a bad read of one key: retried, then a miss; never an outage of the endpoint, never corrupt."""
    uri = rclone_s3.new_prefix("torn")
    fp, h = fingerprint(fe), audio_hash(AUDIO[0])
    want = _cache(rclone_s3, uri).features(AUDIO[0], fe)
    proxy = _CuttingProxy(rclone_s3.port)
    try:
        reader = FeatureCache(uri, endpoint_url=proxy.url, storage_options=rclone_s3.storage_options)
        proxy.cut(2)
        with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"):
            np.testing.assert_array_equal(reader.get(h, fp), want)  # two cut bodies, the third read whole
        assert proxy.cuts == 2 and reader.stats.torn_reads == 2 and reader.stats.remote_hits == 1
        proxy.cut(100)
        assert reader.get(h, fp) is None  # cut every time: a miss after 4 tries
        assert proxy.cuts == 2 + 4 and reader.stats.misses == 1
        proxy.cut(0)
        np.testing.assert_array_equal(reader.features(AUDIO[0], fe), want)  # S3 still in use: a hit at once
        assert reader.stats.remote_hits == 2 and reader.stats.fallbacks == 0
        assert reader.stats.errors == 0 and reader.stats.corrupt == 0 and reader.remote.available()
        assert "unreachable" not in caplog.text
    finally:
        proxy.close()
    assert _assert_all_entries_valid(rclone_s3, uri) == 1  # nothing was deleted or rewritten


def test_down_server_falls_back_within_bound(s3_server_factory, fe, caplog):
    server = s3_server_factory("rclone")
    uri = server.new_prefix("down")
    warm = _cache(server, uri)
    warm.features(AUDIO[0], fe)
    server.stop()
    cache = _cache(server, uri)  # default timeouts
    with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"):
        for p in AUDIO[:3]:
            t = time.monotonic()
            out = cache.features(p, fe)
            assert time.monotonic() - t < BOUND_S
            np.testing.assert_allclose(out, _reference(p, fe), atol=2e-3, rtol=0)
    assert cache.stats.fallbacks == 3 and cache.stats.hits == 0 and cache.stats.writes == 0
    assert "unreachable" in caplog.text and uri in caplog.text and "features computed instead" in caplog.text
    strict = _cache(server, uri, required=True)
    t = time.monotonic()
    with pytest.raises(DataError, match=uri):
        strict.features(AUDIO[0], fe)
    assert time.monotonic() - t < BOUND_S


def test_hung_server_every_call_bounded(s3_server_factory, fe, tmp_path, caplog):
    server = s3_server_factory("rclone")
    uri = server.new_prefix("hung")
    cache = _cache(server, uri, cooldown_s=3.0)  # default timeout_s=10
    fp = fingerprint(fe)
    cache.features(AUDIO[0], fe)  # a live keep-alive connection to the soon frozen server
    strict = _cache(server, uri, required=True, timeout_s=4.0)
    server.freeze()
    try:
        timings = []
        with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"):
            for p in AUDIO[1:4]:
                t = time.monotonic()
                out = cache.features(p, fe)
                timings.append(time.monotonic() - t)
                np.testing.assert_allclose(out, _reference(p, fe), atol=2e-3, rtol=0)
            t = time.monotonic()
            assert cache.get(audio_hash(AUDIO[0]), fp) is None  # S3 down: a miss, not a hang
            cache.put(audio_hash(AUDIO[0]), fp, out)
            timings.append(time.monotonic() - t)
            t = time.monotonic()
            with pytest.raises(DataError, match=uri):
                strict.features(AUDIO[1], fe)
            timings.append(time.monotonic() - t)
        assert max(timings) < BOUND_S, timings
        assert sum(timings[1:3]) < 1.0, timings  # after the first timeout the cool-down skips S3
        assert cache.stats.fallbacks == 3 and "unreachable" in caplog.text
    finally:
        server.thaw()
    time.sleep(3.1)  # the cool-down ends; the thawed server serves again
    np.testing.assert_array_equal(cache.features(AUDIO[0], fe), cache.get(audio_hash(AUDIO[0]), fp))
    assert cache.stats.remote_hits >= 1


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip"])
def test_corrupt_object_is_recomputed(rclone_s3, fe, caplog, damage):
    server = rclone_s3
    uri = server.new_prefix(f"corrupt-{damage}")
    good = _cache(server, uri).features(AUDIO[5], fe)
    fp, h = fingerprint(fe), audio_hash(AUDIO[5])
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    key = f"{prefix}/{_rel(h, fp)}"
    client = server.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    if damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data[-12345] ^= 0x04
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    cache = _cache(server, uri)
    with caplog.at_level(logging.WARNING, logger="sllm_lib.cache"):
        np.testing.assert_array_equal(cache.features(AUDIO[5], fe), good)
    assert cache.stats.corrupt == 1 and cache.stats.writes == 1 and "corrupt entry" in caplog.text
    codec.decode(client.get_object(Bucket=bucket, Key=key)["Body"].read(), audio_hash=h, fp=fp,
                 n_mels=128, n_frames=3000)  # the rewritten entry is valid
    again = _cache(server, uri)
    again.features(AUDIO[5], fe)
    assert again.stats.remote_hits == 1 and again.stats.corrupt == 0


def test_local_tier_hit_and_eviction(rclone_s3, fe, tmp_path):
    server = rclone_s3
    uri = server.new_prefix("tier")
    wavs = AUDIO[:5]
    _cache(server, uri).features(wavs[0], fe)
    node = _cache(server, uri, local_dir=tmp_path / "tier")
    first = node.features(wavs[0], fe)  # from S3, copied into the tier
    assert node.stats.remote_hits == 1 and node.stats.local_hits == 0
    np.testing.assert_array_equal(node.features(wavs[0], fe), first)
    assert node.stats.local_hits == 1 and node.stats.remote_hits == 1
    server.freeze()  # a warm tier needs no S3 at all
    try:
        t = time.monotonic()
        np.testing.assert_array_equal(node.features(wavs[0], fe), first)
        assert time.monotonic() - t < 1.0 and node.stats.local_hits == 2
    finally:
        server.thaw()
    for p in wavs:
        node.features(p, fe)
    entry = max(f.stat().st_size for f in (tmp_path / "tier").rglob("*.safetensors"))  # short clips' sizes differ
    small = _cache(server, uri, local_dir=tmp_path / "small", local_cap_gb=2.5 * entry / 1024 ** 3)
    for p in wavs:
        small.features(p, fe)
    kept = list((tmp_path / "small").rglob("*.safetensors"))
    assert 1 <= len(kept) < len(wavs) and sum(f.stat().st_size for f in kept) <= 2.5 * entry
    assert _assert_all_entries_valid(server, uri) == 5  # evicted from the tier, not from S3
    assert small.get(audio_hash(wavs[-1]), fingerprint(fe)) is not None and small.stats.local_hits == 1


def test_verify_and_gc(rclone_s3, fe):
    from transformers import WhisperFeatureExtractor

    server = rclone_s3
    uri = server.new_prefix("admin")
    cache = _cache(server, uri)
    fp = fingerprint(fe)
    wavs = AUDIO[:4]
    for p in wavs:
        cache.features(p, fe)
    fe80 = WhisperFeatureExtractor(feature_size=80)
    fp80 = fingerprint(fe80)
    for p in wavs[:2]:
        cache.features(p, fe80)
    assert fp80 != fp and cache.fingerprints() == sorted([fp, fp80])
    index = {audio_hash(p): str(p) for p in wavs}
    assert cache.verify(fp, audio_index=index, feature_extractor=fe) == \
        {"checked": 4, "ok": 4, "corrupt": 0, "mismatched": 0, "removed": 0}
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    h0, h1 = audio_hash(wavs[0]), audio_hash(wavs[1])
    server.client().put_object(Bucket=bucket, Key=f"{prefix}/{_rel(h0, fp)}", Body=b"\x00" * 100)
    cache.put(h1, fp, np.zeros((1, 128, 3000), np.float32))  # well-formed, wrong values
    assert cache.verify(fp, sample=2, seed=1)["checked"] == 2
    res = cache.verify(fp, audio_index=index, feature_extractor=fe)
    assert res == {"checked": 4, "ok": 2, "corrupt": 1, "mismatched": 1, "removed": 2}
    assert sorted(cache.entries(fp)) == sorted(set(index) - {h0, h1})
    size80 = sum(len(b) for k, b in _objects(server, uri).items() if k.startswith(fp80))  # entries + settings
    out = cache.gc(keep=[fp])
    assert out["removed_fingerprints"] == [fp80] and out["removed_entries"] == 2
    assert out["bytes"] == size80 > 0
    assert cache.fingerprints() == [fp]
    assert all(not k.startswith(fp80) for k in _objects(server, uri))
    assert cache.gc(keep=[fp])["removed_fingerprints"] == []


def test_credentials_from_environment_and_never_logged(rclone_s3, fe, monkeypatch, caplog):
    server = rclone_s3
    uri = server.new_prefix("envcreds")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
    cache = FeatureCache(uri, endpoint_url=server.endpoint_url)  # no storage_options
    cache.features(AUDIO[6], fe)
    assert cache.stats.writes == 1 and cache.stats.errors == 0
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + server.secret)
    bad = FeatureCache(uri, endpoint_url=server.endpoint_url)
    with caplog.at_level(logging.DEBUG, logger="sllm_lib.cache"):
        bad.features(AUDIO[6], fe)  # signature rejected: a fallback, not an error for the caller
    assert bad.stats.fallbacks == 1 and "unreachable" in caplog.text
    assert server.secret not in caplog.text and server.secret not in repr(bad)


def test_forked_worker_uses_its_own_connection(rclone_s3, fe):
    """DataLoader workers fork after the parent used the cache: the child must not reuse the parent's event
    loop (gone in the child). The child only reads and writes entries: computing features after a fork is
    torch's business (its OpenMP pool must not be used across fork; DataLoader workers set 1 thread)."""
    server = rclone_s3
    uri = server.new_prefix("fork")
    cache = _cache(server, uri)
    first = cache.features(AUDIO[0], fe)
    fp, h0, h7 = fingerprint(fe), audio_hash(AUDIO[0]), audio_hash(AUDIO[7])
    pid = os.fork()
    if pid == 0:  # child: a hit on the parent's entry and a new write, each within the bound
        code = 1
        try:
            t = time.monotonic()
            got = cache.get(h0, fp)
            cache.put(h7, fp, first)
            ok = got is not None and cache.stats.remote_hits == 1 and cache.stats.writes == 2 and not cache.stats.errors
            code = 0 if ok and time.monotonic() - t < BOUND_S else 1
        finally:
            os._exit(code)
    end = time.monotonic() + 30
    while True:  # bounded wait for the child
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert {h0, h7} <= set(cache.entries(fp))
