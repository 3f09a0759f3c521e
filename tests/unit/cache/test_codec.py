"""Entry format: float16 safetensors with a data checksum; every kind of damage is detected."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sllm_lib.cache import codec

H = "ab" * 32
FP = "0123456789abcdef"


def _arr(n=2, mels=8, frames=30, seed=0):
    return np.random.default_rng(seed).standard_normal((n, mels, frames)).astype(np.float16)


def test_round_trip_and_standard_safetensors():
    arr = _arr()
    data = codec.encode(arr, audio_hash=H, fp=FP)
    out = codec.decode(data, audio_hash=H, fp=FP, n_mels=8, n_frames=30)
    assert out.dtype == np.float16 and out.shape == (2, 8, 30) and np.array_equal(out, arr)
    from safetensors.numpy import load

    assert np.array_equal(load(data)["features"], arr)  # any safetensors reader opens it


def _header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncate_data", "truncate_header", "append",
                                    "flip_data_first", "flip_data_last", "flip_header_len"])
def test_damage_is_detected(damage):
    data = bytearray(codec.encode(_arr(), audio_hash=H, fp=FP))
    hlen = int.from_bytes(data[:8], "little")
    if damage == "empty":
        data = bytearray()
    elif damage == "garbage":
        data = bytearray(np.random.default_rng(1).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif damage == "truncate_data":
        data = data[:-100]
    elif damage == "truncate_header":
        data = data[:8 + hlen // 2]
    elif damage == "append":
        data += b"\0" * 16
    elif damage == "flip_data_first":
        data[8 + hlen] ^= 0x01
    elif damage == "flip_data_last":
        data[-1] ^= 0x40
    elif damage == "flip_header_len":
        data[0] ^= 0x08
    with pytest.raises(codec.CorruptEntry):
        codec.decode(bytes(data), audio_hash=H, fp=FP)


def test_every_single_byte_flip_in_a_small_entry_is_detected():
    data = codec.encode(_arr(1, 2, 3), audio_hash=H, fp=FP)
    hlen = int.from_bytes(data[:8], "little")
    header = data[8:8 + hlen]
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        if 8 <= i < 8 + hlen and chr(header[i - 8]) in " \t":  # JSON whitespace padding: harmless
            continue
        try:
            out = codec.decode(bytes(bad), audio_hash=H, fp=FP)
        except codec.CorruptEntry:
            continue
        # a flip inside a JSON string that decodes to the same value cannot exist; anything accepted must
        # be byte-identical data
        assert np.array_equal(out, codec.decode(data, audio_hash=H, fp=FP)), i


def test_entry_under_the_wrong_key_is_rejected():
    data = codec.encode(_arr(), audio_hash=H, fp=FP)
    with pytest.raises(codec.CorruptEntry, match="read under"):
        codec.decode(data, audio_hash="cd" * 32, fp=FP)
    with pytest.raises(codec.CorruptEntry, match="read under"):
        codec.decode(data, audio_hash=H, fp="f" * 16)


def test_shape_is_checked_against_the_fingerprint():
    data = codec.encode(_arr(mels=8, frames=30), audio_hash=H, fp=FP)
    with pytest.raises(codec.CorruptEntry, match="mel bins"):
        codec.decode(data, audio_hash=H, fp=FP, n_mels=128)
    with pytest.raises(codec.CorruptEntry, match="frames"):
        codec.decode(data, audio_hash=H, fp=FP, n_frames=3000)


def test_wrong_dtype_or_rank_is_rejected():
    from safetensors.numpy import save

    meta = {"format": codec.FORMAT, "audio_hash": H, "fingerprint": FP}
    f32 = np.zeros((1, 2, 3), np.float32)
    import hashlib

    data = save({"features": f32}, metadata={**meta, "sha256": hashlib.sha256(f32.tobytes()).hexdigest()})
    with pytest.raises(codec.CorruptEntry, match="dtype"):
        codec.decode(data, audio_hash=H, fp=FP)
    f2 = np.zeros((2, 3), np.float16)
    data = save({"features": f2}, metadata={**meta, "sha256": hashlib.sha256(f2.tobytes()).hexdigest()})
    with pytest.raises(codec.CorruptEntry, match="shape"):
        codec.decode(data, audio_hash=H, fp=FP)


def test_non_finite_values_are_rejected_on_both_sides():
    arr = _arr()
    arr[0, 0, 0] = np.nan
    data = codec.encode(arr, audio_hash=H, fp=FP)  # encode trusts its caller; decode does not
    with pytest.raises(codec.CorruptEntry, match="non-finite"):
        codec.decode(data, audio_hash=H, fp=FP)
    with pytest.raises(ValueError, match="finite"):
        codec.to_stored(np.full((1, 2, 3), 1e6, np.float32))  # overflows float16
    with pytest.raises(ValueError, match="n_chunks"):
        codec.to_stored(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="mel bins"):
        codec.to_stored(np.zeros((1, 2, 3), np.float32), n_mels=128)
    out = codec.to_stored(np.ones((1, 2, 3), np.float64))
    assert out.dtype == np.float16 and out.flags.c_contiguous


def test_encoding_is_deterministic():
    """Two builders of one key upload byte-identical objects (same features, same key)."""
    a = codec.encode(_arr(seed=5), audio_hash=H, fp=FP)
    assert a == codec.encode(_arr(seed=5).copy(), audio_hash=H, fp=FP)
    assert (8 + int.from_bytes(a[:8], "little")) % 8 == 0  # data aligned like safetensors writes it


def _padded(frames=300, kept=37, fill=-0.5):
    arr = np.full((1, 8, frames), fill, dtype=np.float16)
    arr[:, :, :kept] = _arr(1, 8, kept, seed=4)
    arr[0, 3, kept - 1] = 1.25  # the last stored frame differs from the fill in one mel bin only
    return arr


def test_trailing_fill_is_not_stored_and_comes_back_exactly():
    arr = _padded()
    data = codec.encode(arr, audio_hash=H, fp=FP)
    assert codec.trailing_fill(arr) == (37, int(np.float16(-0.5).view(np.uint16)))
    assert len(data) < 8 * 300 * 2 / 4  # 37 of 300 frames stored
    out = codec.decode(data, audio_hash=H, fp=FP, n_mels=8, n_frames=300)
    assert out.shape == (1, 8, 300) and out.dtype == np.float16 and np.array_equal(out, arr)
    assert not out.flags.writeable  # as a view of the entry's bytes
    from safetensors.numpy import load

    assert np.array_equal(load(data)["features"], arr[:, :, :37])  # a standard file: the leading frames


def test_no_fill_to_drop_stores_every_frame():
    arr = _arr(2, 8, 30)
    assert codec.trailing_fill(arr)[0] == 30
    all_fill = np.full((1, 8, 30), 0.25, dtype=np.float16)  # silence: one frame kept
    assert codec.trailing_fill(all_fill)[0] == 1
    assert np.array_equal(codec.decode(codec.encode(all_fill, audio_hash=H, fp=FP), audio_hash=H, fp=FP), all_fill)


@pytest.mark.parametrize("field,value", [("frames", "299"), ("frames", "400"), ("fill", "0"), ("fill", "31744"),
                                         ("frames", "x"), ("fill", None)])
def test_tampered_frames_or_fill_is_detected(field, value):
    """The checksum covers the frame count and the fill: an edited header never yields other features."""
    data = codec.encode(_padded(), audio_hash=H, fp=FP)
    header = _header(data)
    if value is None:
        header["__metadata__"].pop(field)
    else:
        header["__metadata__"][field] = value
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * (-len(blob) % 8)
    hlen = int.from_bytes(data[:8], "little")
    forged = len(blob).to_bytes(8, "little") + blob + data[8 + hlen:]
    with pytest.raises(codec.CorruptEntry):
        codec.decode(forged, audio_hash=H, fp=FP)
