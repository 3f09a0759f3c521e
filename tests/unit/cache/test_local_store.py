"""Local store: atomic publication, hidden temp files, killed writers, LRU eviction of the tier."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sllm_lib.cache import codec
from sllm_lib.cache.backends import LocalStore

REPO = Path(__file__).resolve().parents[3]
FP = "0123456789abcdef"


def _h(i: int) -> str:
    return f"{i:064x}"


def _rel(i: int) -> str:
    h = _h(i)
    return f"{FP}/{h[:2]}/{h}.safetensors"


def _entry(i: int, chunks: int = 1) -> bytes:
    arr = np.full((chunks, 8, 100), i % 100, np.float16)
    return codec.encode(arr, audio_hash=_h(i), fp=FP)


def test_write_read_and_listing_hide_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    store.write(_rel(1), _entry(1))
    stray = store.path(_rel(1)).parent / f".{_h(2)}.safetensors.123.456.abcd.tmp"
    stray.write_bytes(b"partial")
    assert store.read(_rel(1)) == _entry(1)
    assert [rel for rel, _, _ in store.walk("")] == [_rel(1)]
    assert store.read(_rel(2)) is None


def test_failed_write_leaves_neither_final_nor_temp_file(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write(_rel(1), _entry(1))
    assert not store.path(_rel(1)).exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_overwrite_is_atomic_for_concurrent_readers(tmp_path):
    """Writers replace one key again and again; a reader never sees anything but a whole entry."""
    store = LocalStore(tmp_path)
    ramp = np.linspace(0, 1, 3000, dtype=np.float16)  # nothing to trim: whole 1.5 MB entries
    big = [codec.encode(np.full((4, 64, 3000), v, np.float16) + ramp, audio_hash=_h(7), fp=FP) for v in (1, 2)]
    store.write(_rel(7), big[0])
    stop = threading.Event()

    def writer(k: int):
        while not stop.is_set():
            store.write(_rel(7), big[k])

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    seen = set()
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            data = store.read(_rel(7))
            arr = codec.decode(data, audio_hash=_h(7), fp=FP)  # raises on a torn read
            seen.add(float(arr[0, 0, 0]))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen <= {1.0, 2.0}
    assert not [p for p in tmp_path.rglob("*.tmp")]


_KILLED_WRITER = r"""
import sys, numpy as np
from sllm_lib.cache import codec
from sllm_lib.cache.backends import LocalStore
store = LocalStore(sys.argv[1])
fp = "0123456789abcdef"
i = 0
while True:
    h = f"{i:064x}"
    arr = np.full((24, 128, 3000), i % 50, np.float16) + np.linspace(0, 1, 3000, dtype=np.float16)  # no fill to trim
    data = codec.encode(arr, audio_hash=h, fp=fp)  # ~18 MB
    print("begin", i, flush=True)
    store.write(f"{fp}/{h[:2]}/{h}.safetensors", data)
    i += 1
"""


def test_sigkilled_writer_leaves_no_partial_entry(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        begun = 0
        while begun < 3:  # kill it inside its 3rd write
            line = proc.stdout.readline()
            assert line, "writer died"
            begun += line.startswith("begin")
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    store = LocalStore(tmp_path)
    visible = list(store.walk(""))
    assert len(visible) >= 2
    for rel, size, _ in visible:
        h = rel.split("/")[-1].split(".")[0]
        arr = codec.decode(store.read(rel), audio_hash=h, fp=FP)
        assert arr.shape == (24, 128, 3000)
    # whatever the kill left is a hidden temp file, removed by clean_temps once old
    temps = list(tmp_path.rglob(".*.tmp"))
    assert store.clean_temps(max_age_s=3600) == 0
    for t in temps:
        os.utime(t, (time.time() - 7200, time.time() - 7200))
    assert store.clean_temps(max_age_s=3600) == len(temps)
    assert not list(tmp_path.rglob(".*.tmp"))


def test_tier_evicts_least_recently_used(tmp_path):
    one = len(_entry(0))
    store = LocalStore(tmp_path, cap_bytes=int(3.5 * one))
    now = time.time()
    for i in range(3):
        store.write(_rel(i), _entry(i))
        os.utime(store.path(_rel(i)), (now - 100 + i, now - 100 + i))  # 0 oldest
    assert store.read(_rel(0), touch=True) is not None  # 0 becomes the most recently used
    store.write(_rel(3), _entry(3))  # over the cap: evict down to 90 % of it
    left = {rel for rel, _, _ in store.walk("")}
    assert _rel(3) in left and _rel(0) in left and _rel(1) not in left
    assert sum(s for _, s, _ in store.walk("")) <= 3.5 * one


def test_tier_never_evicts_the_entry_just_written(tmp_path):
    store = LocalStore(tmp_path, cap_bytes=10)  # smaller than any entry
    store.write(_rel(1), _entry(1))
    store.write(_rel(2), _entry(2))
    assert [rel for rel, _, _ in store.walk("")] == [_rel(2)]


def test_entry_evicted_under_a_reader_is_a_miss(tmp_path, monkeypatch):
    store = LocalStore(tmp_path, cap_bytes=1 << 30)
    store.write(_rel(1), _entry(1))
    real_open = open

    def evicting_open(path, *a, **k):  # another process evicts between the listing and the open
        if str(path) == str(store.path(_rel(1))):
            os.unlink(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", evicting_open)
    assert store.read(_rel(1), touch=True) is None


def test_eviction_tolerates_files_already_gone(tmp_path, monkeypatch):
    store = LocalStore(tmp_path, cap_bytes=int(1.5 * len(_entry(0))))
    for i in range(2):
        store.write(_rel(i), _entry(i))
    real_walk = store.walk

    def walk_then_vanish(rel):  # a concurrent evictor removes everything after our scan
        items = list(real_walk(rel))
        for r, _, _ in items:
            store.path(r).unlink(missing_ok=True)
        return iter(items)

    monkeypatch.setattr(store, "walk", walk_then_vanish)
    store.evict()  # no FileNotFoundError
