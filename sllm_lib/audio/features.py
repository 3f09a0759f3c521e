"""Audio loading and Whisper log-mel features in 30 s chunks (Voxtral: 128 x 3000 per chunk -> 375 tokens)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from sllm_lib.errors import DataError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30
TOKENS_PER_CHUNK = 375


def load_audio(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform at `sample_rate` (linear resampling when the file differs)."""
    import soundfile as sf

    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise DataError(f"{path}: cannot read audio ({exc})") from exc
    wave = wave.mean(axis=1)
    if sr != sample_rate:
        n_out = int(round(len(wave) * sample_rate / sr))
        wave = np.interp(np.linspace(0, len(wave) - 1, n_out), np.arange(len(wave)), wave).astype(np.float32)
    return wave


def num_chunks(num_samples: int, *, sample_rate: int = SAMPLE_RATE) -> int:
    """How many 30 s chunks a waveform takes (at least one)."""
    per_chunk = CHUNK_SECONDS * sample_rate
    return max(1, -(-num_samples // per_chunk))


def log_mel_chunks(wave: np.ndarray, feature_extractor: Any) -> np.ndarray:
    """(n_chunks, n_mels, 3000) float32 log-mel features, each chunk padded to 30 s."""
    per_chunk = CHUNK_SECONDS * SAMPLE_RATE
    chunks = [wave[i:i + per_chunk] for i in range(0, max(len(wave), 1), per_chunk)] or [wave]
    out = feature_extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length")
    return np.asarray(out["input_features"], dtype=np.float32)


def compute_features(path: str | Path, feature_extractor: Any) -> np.ndarray:
    """Load `path` and compute its log-mel chunks as float16.

    The shared cache stores float16; returning the same here makes cached and on-the-fly features
    identical, so a training run gives the same loss with the cache on or off. The model casts them
    to its own dtype on its device (see `SpeechCollator`).
    """
    return log_mel_chunks(load_audio(path), feature_extractor).astype(np.float16)


_CACHE: Any = None


def set_feature_cache(cache: Any) -> None:
    """The FeatureCache `audio_features` reads through in this process (None: compute every time)."""
    global _CACHE
    _CACHE = cache


def feature_cache() -> Any:
    return _CACHE


def audio_features_many(paths: Iterable[str | Path], feature_extractor: Any) -> Iterator[np.ndarray]:
    """`audio_features` of each path, in order: read ahead in parallel through the active cache
    (`FeatureCache.features_many`), else computed one at a time."""
    if _CACHE is not None:
        return _CACHE.features_many(paths, feature_extractor)
    return (compute_features(p, feature_extractor) for p in paths)


def audio_features(path: str | Path, feature_extractor: Any) -> np.ndarray:
    """The float16 log-mel chunks of `path`: from the active feature cache, else computed."""
    if _CACHE is not None:
        return _CACHE.features(path, feature_extractor)
    return compute_features(path, feature_extractor)
