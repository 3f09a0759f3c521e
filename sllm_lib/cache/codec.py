"""The bytes of one cache entry, and their strict check on the way back.

Format choice: a safetensors file (one float16 tensor "features", shape (n_chunks, n_mels, n_frames))
whose `__metadata__` carries the sha256 of the tensor bytes, the entry's audio hash and fingerprint.

Why not a plain .npy: the .npy header dict must hold exactly descr/fortran_order/shape, so it has no room
for a checksum; bytes appended after the data are outside the format; a sidecar checksum object is a
second write that can be torn from the first (non-atomic pair); and S3 user metadata is not exposed
uniformly by fsspec backends (local files have none). safetensors is already a dependency, is a
standard format any tool can open (`safetensors.numpy.load`), has a JSON header with free-form string
metadata, and its header states the exact data length, so truncation is detected by length and a
flipped byte by the checksum, all from the one object. The checksum covers the data; the header is
validated structurally (JSON, one F16 tensor, offsets covering the file exactly, key fields equal to the
key it was read under, so an object copied under the wrong name is rejected too).

Trailing fill: a clip shorter than its 30 s chunk is padded, and every padded frame of Whisper's log-mel
holds one value (the clamp floor), so an entry stores only the frames before that run and the metadata
states the full frame count and the fill (`frames`, `fill`: the float16 bits); the checksum covers both.
A 2 s clip's entry is ~60 KB instead of 768 KB: ~10x fewer bytes to read from disk or S3 per sample.
The stored tensor stays a standard safetensors one (the leading frames).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

FORMAT = "sllm.audio-features/2"  # /2: trailing fill (keys.CODE_VERSION 2)
TENSOR = "features"
MAX_HEADER = 64 * 1024


class CorruptEntry(ValueError):
    """The bytes are not a valid entry for the key they were read under (the message says why)."""


def to_stored(features: np.ndarray, *, n_mels: int | None = None, n_frames: int | None = None) -> np.ndarray:
    """(n_chunks, n_mels, n_frames) float16, C-contiguous; ValueError when it cannot be a valid entry."""
    arr = np.asarray(features)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"features must be (n_chunks, n_mels, n_frames), got shape {arr.shape}")
    if n_mels is not None and arr.shape[1] != n_mels:
        raise ValueError(f"features have {arr.shape[1]} mel bins, the fingerprint says {n_mels}")
    if n_frames is not None and arr.shape[2] != n_frames:
        raise ValueError(f"features have {arr.shape[2]} frames, the fingerprint says {n_frames}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf, refused below
        stored = np.ascontiguousarray(arr, dtype="<f2")
    if not np.isfinite(stored).all():
        raise ValueError("features are not finite in float16 (NaN/inf or out of the float16 range)")
    return stored


def trailing_fill(arr: np.ndarray) -> tuple[int, int]:
    """(frames to store, fill bits): the frames after the first stored ones hold, in every chunk and mel bin,
    the one float16 value whose bits are `fill`. At least one frame is stored."""
    bits = np.ascontiguousarray(arr, dtype="<f2").view(np.uint16)
    fill = int(bits[0, 0, -1])
    differs = (bits != fill).any(axis=(0, 1))
    last = np.flatnonzero(differs)
    kept = int(last[-1]) + 1 if last.size else 1
    return kept, (fill if kept < arr.shape[2] else 0)


def _sha256(body: bytes | memoryview, frames: int, fill: int) -> str:
    h = hashlib.sha256(body)
    h.update(f"|frames={frames}|fill={fill}".encode())
    return h.hexdigest()


def encode(features: np.ndarray, *, audio_hash: str, fp: str) -> bytes:
    """The entry bytes of `features` (already float16, see `to_stored`).

    Written here rather than with `safetensors.numpy.save` so the bytes are deterministic (the library
    orders metadata keys from a hash map): two builders of one key upload identical objects. The layout
    is the safetensors one (u64 header length, JSON header padded with spaces to 8 bytes, raw data), and
    the tests check that `safetensors.numpy.load` reads it.
    """
    arr = np.ascontiguousarray(features, dtype="<f2")
    frames = int(arr.shape[2])
    kept, fill = trailing_fill(arr)
    arr = np.ascontiguousarray(arr[:, :, :kept])
    body = arr.tobytes()
    meta = {
        "format": FORMAT,
        "audio_hash": audio_hash,
        "fingerprint": fp,
        "frames": str(frames),
        "fill": str(fill),
        "sha256": _sha256(body, frames, fill),
    }
    header = {"__metadata__": meta,
              TENSOR: {"dtype": "F16", "shape": [int(d) for d in arr.shape], "data_offsets": [0, len(body)]}}
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob + body


def decode(data: bytes, *, audio_hash: str, fp: str, n_mels: int | None = None,
           n_frames: int | None = None) -> np.ndarray:
    """The float16 array stored in `data`, after every check; CorruptEntry otherwise."""
    return check(data, audio_hash=audio_hash, fp=fp, n_mels=n_mels, n_frames=n_frames)[0]


def check(data: bytes, *, audio_hash: str, fp: str, n_mels: int | None = None, n_frames: int | None = None,
          verified_sha256: str | None = None) -> tuple[np.ndarray, str]:
    """(the float16 array, the data checksum its header states); CorruptEntry when any check fails.

    verified_sha256: the checksum of data this process already hashed and scanned under the same key. When the
    header states it, the data is not hashed or scanned again: the structure, the key and the exact length are
    still checked on every read (a torn, truncated or padded file, or another entry renamed over this one, is
    caught), a byte flipped on disk since that check is not (`sllm cache verify` is the full check).
    """
    size = len(data)
    if size < 8:
        raise CorruptEntry(f"{size} bytes: too short for a header")
    hlen = int.from_bytes(data[:8], "little")
    if not 2 <= hlen <= MAX_HEADER or 8 + hlen > size:
        raise CorruptEntry(f"bad header length {hlen} for {size} bytes")
    try:
        header = json.loads(bytes(data[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptEntry(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptEntry("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        raise CorruptEntry("header has no metadata")
    if meta.get("format") != FORMAT:
        raise CorruptEntry(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("audio_hash") != audio_hash or meta.get("fingerprint") != fp:
        raise CorruptEntry(f"entry is for {meta.get('audio_hash')}/{meta.get('fingerprint')}, "
                           f"read under {audio_hash}/{fp}")
    if set(header) != {TENSOR}:
        raise CorruptEntry(f"tensors {sorted(header)}, expected [{TENSOR!r}]")
    info = header[TENSOR]
    if not isinstance(info, dict):
        raise CorruptEntry("tensor info is not a JSON object")
    shape = info.get("shape")
    if info.get("dtype") != "F16":
        raise CorruptEntry(f"dtype {info.get('dtype')!r}, expected F16 (float16)")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise CorruptEntry(f"shape {shape!r}, expected 3 positive dims")
    frames_s, fill_s = meta.get("frames"), meta.get("fill")
    if not (isinstance(frames_s, str) and frames_s.isdigit() and isinstance(fill_s, str) and fill_s.isdigit()):
        raise CorruptEntry(f"frames {frames_s!r} / fill {fill_s!r}, expected decimal integers")
    frames, fill = int(frames_s), int(fill_s)
    if not shape[2] <= frames or fill > 0xFFFF or (fill & 0x7C00) == 0x7C00:
        raise CorruptEntry(f"{shape[2]} stored frames of {frames}, fill bits {fill}: not a valid entry")
    kept = shape[2]
    shape = [shape[0], shape[1], frames]
    if n_mels is not None and shape[1] != n_mels:
        raise CorruptEntry(f"shape {shape}: {shape[1]} mel bins, expected {n_mels}")
    if n_frames is not None and shape[2] != n_frames:
        raise CorruptEntry(f"shape {shape}: {shape[2]} frames, expected {n_frames}")
    count = shape[0] * shape[1] * kept
    start = 8 + hlen
    if info.get("data_offsets") != [0, 2 * count] or start + 2 * count != size:
        raise CorruptEntry(f"data offsets {info.get('data_offsets')} do not cover the {size - start} data bytes "
                           f"(truncated or padded)")
    stated = meta.get("sha256")
    stored = np.frombuffer(data, dtype="<f2", count=count, offset=start).reshape(shape[0], shape[1], kept)
    verified = verified_sha256 is not None and stated == verified_sha256
    if not verified:
        if _sha256(memoryview(data)[start:], frames, fill) != stated:
            raise CorruptEntry("data checksum mismatch")
        if not all_finite(stored):
            raise CorruptEntry("non-finite values")
    if kept == frames:
        return stored, stated  # read-only: a view of the entry's bytes
    arr = np.empty(shape, dtype="<f2")
    arr[:, :, :kept] = stored
    arr[:, :, kept:].view(np.uint16)[...] = fill
    arr.flags.writeable = False  # as a view of the entry's bytes would be
    return arr, stated


def stated_sha256(data: bytes) -> str:
    """The data checksum in the header of entry bytes made by `encode` (no checks: use on our own bytes)."""
    hlen = int.from_bytes(data[:8], "little")
    return json.loads(bytes(data[8:8 + hlen]))["__metadata__"]["sha256"]


def all_finite(arr: np.ndarray) -> bool:
    """No NaN/inf in a float16 array: its exponent bits are never all ones (one integer pass, no float math)."""
    bits = np.ascontiguousarray(arr).view(np.uint16)
    return not bool(np.any((bits & 0x7C00) == 0x7C00))
