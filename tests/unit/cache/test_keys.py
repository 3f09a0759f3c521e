"""Cache keys: content hash of the audio, fingerprint of the feature settings."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from sllm_lib.cache import keys
from sllm_lib.cache.keys import audio_hash, extractor_settings, fingerprint

SAMPLE_AUDIO = Path(__file__).resolve().parents[3] / "data" / "sample" / "audio"


def _fe(**kw):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(**{"feature_size": 128, **kw})


def test_settings_cover_what_decides_the_features():
    s = extractor_settings(_fe())
    assert s["sampling_rate"] == 16000 and s["n_mels"] == 128 and s["n_fft"] == 400 and s["hop_length"] == 160
    assert s["chunk_length"] == 30 and s["n_samples"] == 480000 and s["n_frames"] == 3000
    assert s["padding"] == "max_length" and s["dtype"] == "float16" and s["code_version"] == keys.CODE_VERSION


def test_fingerprint_is_stable_16_hex():
    fp = fingerprint(_fe())
    assert fp == fingerprint(_fe()) and len(fp) == 16 and int(fp, 16) >= 0
    assert keys.FP_RE.match(fp)


@pytest.mark.parametrize("change", [{"feature_size": 80}, {"hop_length": 200}, {"n_fft": 512},
                                    {"chunk_length": 20}, {"dither": 1e-5}])
def test_changed_setting_gives_new_fingerprint(change):
    assert fingerprint(_fe(**change)) != fingerprint(_fe())


def test_code_version_bump_gives_new_fingerprint(monkeypatch):
    before = fingerprint(_fe())
    monkeypatch.setattr(keys, "CODE_VERSION", keys.CODE_VERSION + "-next")
    assert fingerprint(_fe()) != before


def test_non_feature_extractor_is_refused():
    with pytest.raises(ValueError, match="not a log-mel"):
        extractor_settings(object())


def test_same_audio_same_key_wherever_it_lives(tmp_path):
    src = SAMPLE_AUDIO / "asr_000.wav"
    copy = tmp_path / "elsewhere" / "renamed.wav"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    h = audio_hash(src)
    assert h == audio_hash(copy) == hashlib.sha256(src.read_bytes()).hexdigest()
    assert h != audio_hash(SAMPLE_AUDIO / "asr_001.wav")
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    assert audio_hash(copy) != h  # an edited file never hits the old entry


def test_audio_hash_streams_large_files(tmp_path):
    big = tmp_path / "big.bin"
    blob = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, not a multiple of the read size
    big.write_bytes(blob)
    assert audio_hash(big, chunk_bytes=1 << 16) == hashlib.sha256(blob).hexdigest()


def test_key_parts_are_validated():
    with pytest.raises(ValueError):
        keys.check_hash("../../etc/passwd")
    with pytest.raises(ValueError):
        keys.check_fp("ABCDEF0123456789")  # upper case is not what fingerprint() makes
    assert keys.check_fp("0123456789abcdef") == "0123456789abcdef"
