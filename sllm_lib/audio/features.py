"""Audio loading and Whisper log-mel features in fixed-length chunks.

The chunk length is the feature extractor's (`n_samples`, `nb_max_frames`): Voxtral's is 30 s, 128 mels x 3000
frames -> 375 audio tokens; `mini:voxtral`'s is 6 s, 80 x 600 -> 75. Every mel frame count becomes audio tokens the
same way: the encoder's second conv halves the frames and the projector stacks 4 encoder frames per token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from sllm_lib.errors import DataError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30  # Whisper's and Voxtral's window; a feature extractor without n_samples gets this
HOP_LENGTH = 160  # Whisper's 10 ms hop at 16 kHz
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
MEL_FRAMES_PER_POSITION = 2  # the encoder's second conv (stride 2) halves the mel frames to its positions
ENCODER_FRAMES_PER_AUDIO_TOKEN = 4  # the projector stacks 4 encoder positions into one LLM token
FRAMES_PER_AUDIO_TOKEN = MEL_FRAMES_PER_POSITION * ENCODER_FRAMES_PER_AUDIO_TOKEN  # 8


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


def chunk_samples(feature_extractor: Any = None) -> int:
    """Samples per chunk at 16 kHz: the extractor's `n_samples` (30 s when it has none)."""
    n = getattr(feature_extractor, "n_samples", None)
    return int(n) if n else CHUNK_SECONDS * SAMPLE_RATE


def chunk_seconds(feature_extractor: Any = None) -> float:
    return chunk_samples(feature_extractor) / SAMPLE_RATE


def chunk_frames(feature_extractor: Any = None) -> int:
    """Mel frames per chunk: the extractor's `nb_max_frames` (samples / hop when it has none)."""
    n = getattr(feature_extractor, "nb_max_frames", None)
    hop = getattr(feature_extractor, "hop_length", None) or HOP_LENGTH
    return int(n) if n else chunk_samples(feature_extractor) // int(hop)


def tokens_per_chunk(feature_extractor: Any = None) -> int:
    """Audio placeholder tokens one chunk becomes in the prompt (375 for 30 s, 75 for 6 s)."""
    return chunk_frames(feature_extractor) // FRAMES_PER_AUDIO_TOKEN


def num_chunks(num_samples: int, feature_extractor: Any = None) -> int:
    """How many chunks a waveform of `num_samples` (16 kHz) takes (at least one)."""
    return max(1, -(-num_samples // chunk_samples(feature_extractor)))


def log_mel_chunks(wave: np.ndarray, feature_extractor: Any) -> np.ndarray:
    """(n_chunks, n_mels, frames per chunk) float32 log-mel features, the last chunk padded to the chunk length."""
    per_chunk = chunk_samples(feature_extractor)
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
