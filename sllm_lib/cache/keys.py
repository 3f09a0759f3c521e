"""Content-addressed keys for the audio-feature cache.

An entry is addressed by two values:

* `audio_hash(path)`: sha256 of the audio file's bytes, so the same recording under another path, on
  another node or in another job hits the same entry, and an edited file never hits a stale one;
* `fingerprint(feature_extractor)`: 16 hex chars of sha256 over the settings that decide the feature
  values (sample rate, mel bins, FFT, hop, 30 s chunking and padding, the stored dtype and
  `CODE_VERSION`). Any change to them gives a new fingerprint, i.e. a fresh namespace in the cache; old
  namespaces are dropped with `FeatureCache.gc(keep=[...])`.

The settings deliberately do not hash the mel filter bank itself: it is a floating-point product whose
last bits can differ between numpy builds/CPUs, which would split one cache into per-node namespaces. It
is fully determined by the hashed parameters for a given extractor class; bump `CODE_VERSION` when the
computation changes in a way the parameters do not show (another resampler, another filter-bank norm, a
transformers upgrade that changes Whisper's log-mel).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from pathlib import Path
from typing import Any

from sllm_lib.audio.features import SAMPLE_RATE, chunk_samples

# Bump when sllm's feature computation changes (sllm_lib.audio.features: loading, resampling, chunking).
CODE_VERSION = "2"  # 2: entries store the frames before the trailing fill (codec FORMAT /2)

STORED_DTYPE = "float16"
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
FP_RE = re.compile(r"^[0-9a-f]{16}$")


def _num(value: Any) -> Any:
    """JSON-stable scalar: integers stay ints, other reals become floats (numpy scalars included)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


# every attribute `extractor_settings` reads: equal values give an equal fingerprint (see `extractor_key`)
EXTRACTOR_ATTRS = ("feature_size", "hop_length", "n_samples", "nb_max_frames", "sampling_rate", "n_fft",
                   "chunk_length", "padding_value", "dither")


def extractor_key(feature_extractor: Any) -> tuple | None:
    """A hashable stand-in for the extractor's settings, cheap enough to compute per clip (None when a value is
    not hashable): a cache memoises the fingerprint under it."""
    key = (type(feature_extractor), *(getattr(feature_extractor, a, None) for a in EXTRACTOR_ATTRS))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _seconds(samples: int) -> int | float:
    """Whole seconds stay an int (30, as this field always was), so existing fingerprints do not change."""
    return samples // SAMPLE_RATE if samples % SAMPLE_RATE == 0 else samples / SAMPLE_RATE


def extractor_settings(feature_extractor: Any) -> dict:
    """Everything that determines the cached feature values of `feature_extractor` (JSON-serialisable).

    `n_mels` and `n_frames` are also what an entry's shape must be: (n_chunks, n_mels, n_frames).
    """
    fe = feature_extractor
    n_mels = getattr(fe, "feature_size", None)
    hop = getattr(fe, "hop_length", None)
    n_samples = getattr(fe, "n_samples", None)
    n_frames = getattr(fe, "nb_max_frames", None)
    if n_frames is None and n_samples and hop:
        n_frames = int(n_samples) // int(hop)
    if n_mels is None or n_frames is None:
        raise ValueError(f"{type(fe).__name__} has no feature_size/nb_max_frames: not a log-mel feature extractor")
    return {
        "code_version": CODE_VERSION,
        "extractor": type(fe).__name__,
        "sampling_rate": _num(getattr(fe, "sampling_rate", SAMPLE_RATE)),
        "n_mels": int(n_mels),
        "n_fft": _num(getattr(fe, "n_fft", None)),
        "hop_length": _num(hop),
        "chunk_length": _num(getattr(fe, "chunk_length", None)),
        "n_samples": _num(n_samples),
        "n_frames": int(n_frames),
        "padding": "max_length",
        "padding_value": _num(getattr(fe, "padding_value", 0.0)),
        "dither": _num(getattr(fe, "dither", 0.0)),
        "chunk_seconds": _seconds(chunk_samples(fe)),
        "load_sample_rate": SAMPLE_RATE,
        "dtype": STORED_DTYPE,
    }


def settings_fingerprint(settings: dict) -> str:
    """16 hex chars of sha256 over the canonical JSON of `settings`."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint(feature_extractor: Any) -> str:
    """The cache namespace of `feature_extractor` (16 hex chars)."""
    return settings_fingerprint(extractor_settings(feature_extractor))


def audio_hash(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex of the file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def check_hash(value: str) -> str:
    if not isinstance(value, str) or not HASH_RE.match(value):
        raise ValueError(f"not an audio hash (64 lowercase hex chars): {value!r}")
    return value


def check_fp(value: str) -> str:
    if not isinstance(value, str) or not FP_RE.match(value):
        raise ValueError(f"not a feature fingerprint (16 lowercase hex chars): {value!r}")
    return value
