"""CTranslate2 Whisper models (faster-whisper's `model.bin`) converted to a transformers Whisper folder.

The file is read by our own parser; neither `ctranslate2` nor `faster_whisper` is needed. Its layout (what
CTranslate2's `ModelSpec.save` writes and `src/models/model.cc` reads; binary versions 1-6), little-endian:

    u32  binary_version                          1..6 (4.x writes 6)
    str  spec_name, u32 spec_revision            version >= 2 (e.g. "WhisperSpec", 3)
    u32  num_variables, then per variable, in name order:
         str name, u8 rank, u32 dims[rank],
         u8 dtype id, u32 num_bytes              version >= 4: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
         u8 item_size, u32 num_items             version < 4: 4 f32, 2 i16, 1 i8
         the raw little-endian data (C order)
    u32  num_aliases, then (str alias, str target) pairs   version >= 3 (a tied weight: decoder/projection)
    str  = u16 byte length including a trailing NUL, the UTF-8 bytes, the NUL

Scalars (rank 0) carry layer settings (`decoder/num_heads` int16, `decoder/activation` int8 enum, ...).
Quantized weights (int8 / int16) come with a `<name>_scale` variable: float = stored / scale, per output row.

A Whisper spec names its weights `encoder/conv1/weight`, `encoder/layer_N/self_attention/linear_0/weight` (the
fused q, k, v projection), `decoder/layer_N/attention/linear_1/weight` (the fused cross-attention k, v), and so
on; `_whisper_layer_names` lists the mapping to the transformers names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from sllm_lib.errors import DataError

log = logging.getLogger(__name__)

BINARY_VERSIONS = range(1, 7)  # what CTranslate2 1.x-4.x write; 4.x writes 6
# the DataType enum of ctranslate2/types.h, in order (dtype id -> numpy dtype); bf16 is read as raw uint16
_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_OLD_ITEM_SIZES = {4: "float32", 2: "int16", 1: "int8"}  # binary version < 4 stores an item size, not a type
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
# settings a Whisper spec always carries; each is checked (`_check_whisper_settings`) and then has no weight
_SETTINGS = ("decoder/activation", "decoder/alibi", "decoder/alignment_heads", "decoder/alignment_layer",
             "decoder/num_heads", "decoder/pre_norm", "decoder/scale_embeddings",
             "decoder/start_from_zero_embedding", "encoder/num_heads")
CONVERSION_RECORD = "sllm_ct2_source.json"  # written beside the weights: where they came from


class Ct2Model(NamedTuple):
    """A parsed CTranslate2 `model.bin`."""

    spec: str
    """The spec name, e.g. "WhisperSpec" ("" for binary version 1)."""
    revision: int
    """The spec revision (WhisperSpec 3 in CTranslate2 4.x)."""
    variables: dict[str, np.ndarray]
    """Name -> array as stored (float16 stays float16; bfloat16 is widened to float32, numpy has no bf16)."""
    aliases: dict[str, str]
    """Alias name -> the variable it shares (tied weights)."""


class _Reader:
    """Bounds-checked little-endian reads from one buffer; every failure names the source and the offset."""

    def __init__(self, data: memoryview, source: str) -> None:
        self.data, self.source, self.pos = data, source, 0

    def fail(self, message: str) -> DataError:
        return DataError(f"{self.source}: not a readable CTranslate2 model.bin: {message}")

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated at byte {self.pos} of {len(self.data)}: expected {what} ({n} bytes), "
                            f"{len(self.data) - self.pos} left (a model.bin split in parts must be joined whole, "
                            "in order)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, fmt: Literal["B", "H", "I"], what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.uint("H", f"the length of {what}")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise self.fail(f"{what} at byte {self.pos - n} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} at byte {self.pos - n} is not UTF-8 ({e})") from None


def _source_bytes(source: Path | str | bytes | Sequence[Path | str]) -> tuple[bytes, str]:
    """The model bytes and a label for messages: one file, bytes, or the parts of a split file joined in order."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<model.bin bytes>"
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes(), str(source)
    parts = [Path(p) for p in source]
    if not parts:
        raise ValueError("read_ct2_model: got an empty list of model.bin parts")
    return b"".join(p.read_bytes() for p in parts), " + ".join(str(p) for p in parts)


def _read_variable(r: _Reader, version: int, index: int) -> tuple[str, np.ndarray]:
    """One variable record (name, shape, type, data) as a numpy array viewing the buffer."""
    name = r.string(f"the name of variable {index}")
    rank = r.uint("B", f"the rank of {name!r}")
    shape = tuple(r.uint("I", f"dimension {d} of {name!r}") for d in range(rank))
    if version >= 4:
        type_id = r.uint("B", f"the dtype of {name!r}")
        if type_id >= len(_DTYPES):
            raise r.fail(f"variable {name!r} has dtype id {type_id}; known ids are 0-{len(_DTYPES) - 1} "
                         f"({', '.join(_DTYPES)})")
        dtype, num_bytes = _DTYPES[type_id], r.uint("I", f"the byte count of {name!r}")
    else:
        item_size = r.uint("B", f"the item size of {name!r}")
        if item_size not in _OLD_ITEM_SIZES:
            raise r.fail(f"variable {name!r} has item size {item_size}; binary version {version} knows 1, 2, 4")
        dtype, num_bytes = _OLD_ITEM_SIZES[item_size], r.uint("I", f"the item count of {name!r}") * item_size
    storage = np.dtype("<u2" if dtype == "bfloat16" else dtype).newbyteorder("<")
    expected = math.prod(shape) * storage.itemsize
    if num_bytes != expected:
        raise r.fail(f"variable {name!r} of shape {list(shape)} and dtype {dtype} should hold {expected} bytes, "
                     f"the file says {num_bytes}")
    array = np.frombuffer(r.take(num_bytes, f"the data of {name!r}"), dtype=storage).reshape(shape)
    if dtype == "bfloat16":  # the high half of a float32: widening is exact
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return name, array


def read_ct2_model(source: Path | str | bytes | Sequence[Path | str]) -> Ct2Model:
    """Parse a CTranslate2 `model.bin` (binary versions 1-6; the layout is in this module's docstring).

    Args:
        source: the file, its bytes, or the paths of a file split in parts (joined in the given order).

    Returns:
        The spec name and revision, the variables (numpy arrays viewing the read bytes, so no copy) and the
        aliases (alias -> target).

    Raises:
        DataError: a truncated file, an unknown binary version or dtype, a size that disagrees with a shape,
            bytes left after the aliases, or an alias to a missing variable; the message names the source.

    Example:
        >>> model = read_ct2_model(Path("model.bin"))        # doctest: +SKIP
        >>> model.spec, model.variables["encoder/conv1/weight"].shape
        ('WhisperSpec', (512, 80, 3))
    """
    data, label = _source_bytes(source)
    r = _Reader(memoryview(data), label)
    version = r.uint("I", "the binary version")
    if version not in BINARY_VERSIONS:
        raise r.fail(f"binary version {version} is unknown (this reader knows {BINARY_VERSIONS.start}-"
                     f"{BINARY_VERSIONS.stop - 1}); is it a CTranslate2 model.bin, and is the first part first?")
    spec, revision = (r.string("the spec name"), r.uint("I", "the spec revision")) if version >= 2 else ("", 1)
    count = r.uint("I", "the variable count")
    variables = dict(_read_variable(r, version, i) for i in range(count))
    aliases: dict[str, str] = {}
    if version >= 3:
        for i in range(r.uint("I", "the alias count")):
            alias = r.string(f"the name of alias {i}")
            aliases[alias] = r.string(f"the target of alias {alias!r}")
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes follow the end of the model at byte {r.pos} (a part joined twice, "
                     "or parts in the wrong order?)")
    missing = {a: t for a, t in aliases.items() if t not in variables}
    if missing:
        raise r.fail(f"aliases point to variables the file lacks: {missing}")
    return Ct2Model(spec, revision, variables, aliases)


def _dequantized(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float weights in place of int8/int16 ones and their `_scale`s (CT2 stores round(w * scale))."""
    out = {n: v for n, v in variables.items() if not n.endswith("_scale")}
    for name, scale in variables.items():
        if not name.endswith("_scale"):
            continue
        base = name[: -len("_scale")]
        if base + "_zero" in variables:
            raise DataError(f"{base}: AWQ-quantized weights (with {base}_zero) are not supported; convert the "
                            "model to float16 or int8 with CTranslate2")
        q = variables[base].astype(np.float32)
        s = scale.astype(np.float32).reshape(scale.shape + (1,) * (q.ndim - scale.ndim))  # per row, or scalar
        out[base] = q / s
    return out


def _scalar(variables: dict[str, np.ndarray], name: str) -> float:
    if name not in variables:
        raise DataError(f"the CTranslate2 Whisper model lacks the setting {name!r}")
    return float(variables[name].reshape(-1)[0])


def _check_whisper_settings(variables: dict[str, np.ndarray], d_model: int) -> bool:
    """Refuse settings a transformers Whisper cannot express; return `scale_embedding`."""
    wanted = {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/alibi": 0,
              "decoder/start_from_zero_embedding": 0}
    wrong = {n: _scalar(variables, n) for n, v in wanted.items() if _scalar(variables, n) != v}
    if wrong:
        raise DataError(f"CTranslate2 Whisper settings differ from Whisper's ({wanted}): {wrong}")
    scale = variables.get("decoder/scale_embeddings")
    # int8 0/1 (bool: 1 means sqrt(d_model)), or the float32 factor itself
    if scale is None or (scale.dtype == np.int8 and int(scale) == 0):
        return False
    if scale.dtype == np.int8 or math.isclose(float(scale), math.sqrt(d_model), rel_tol=1e-4):
        return True
    if math.isclose(float(scale), 1.0):
        return False
    raise DataError(f"decoder/scale_embeddings is {float(scale)}: transformers Whisper scales by 1 or "
                    f"sqrt(d_model) = {math.sqrt(d_model):.3f} only")


def _attention(src: str, dst: str, *, fused: Literal["qkv", "kv"], d: int) -> list[tuple[str, str, slice]]:
    """(CT2 name, HF name, rows) for one fused projection; HF's k_proj has no bias. CT2 stores the fused bias
    with zeros for k, and a k bias only adds q.b_k to every score of a query, which softmax cancels."""
    parts = ("q", "k", "v") if fused == "qkv" else ("k", "v")
    rows = {p: slice(i * d, (i + 1) * d) for i, p in enumerate(parts)}
    out = [(f"{src}/weight", f"{dst}.{p}_proj.weight", rows[p]) for p in parts]
    return out + [(f"{src}/bias", f"{dst}.{p}_proj.bias", rows[p]) for p in parts if p != "k"]


def _linear(src: str, dst: str) -> list[tuple[str, str, slice]]:
    return [(f"{src}/weight", f"{dst}.weight", slice(None)), (f"{src}/bias", f"{dst}.bias", slice(None))]


def _norm(src: str, dst: str) -> list[tuple[str, str, slice]]:
    return [(f"{src}/gamma", f"{dst}.weight", slice(None)), (f"{src}/beta", f"{dst}.bias", slice(None))]


def _whisper_layer_names(side: Literal["encoder", "decoder"], i: int, d: int) -> list[tuple[str, str, slice]]:
    """The CT2 -> transformers names of one encoder or decoder layer."""
    src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
    names = (_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
             + _attention(f"{src}/self_attention/linear_0", f"{dst}.self_attn", fused="qkv", d=d)
             + _linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
             + _norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
             + _linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
             + _linear(f"{src}/ffn/linear_1", f"{dst}.fc2"))
    if side == "decoder":  # cross-attention: q alone, k and v fused
        names += (_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
                  + _linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                  + _attention(f"{src}/attention/linear_1", f"{dst}.encoder_attn", fused="kv", d=d)
                  + _linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
    return names


def _num_layers(variables: dict[str, np.ndarray], side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    if n == 0:
        raise DataError(f"the CTranslate2 model has no {side} layers ({side}/layer_0/... is missing)")
    return n


def whisper_dims(variables: dict[str, np.ndarray]) -> dict[str, Any]:
    """`WhisperConfig` sizes read from the weights' shapes and the head-count settings (nothing assumed)."""
    try:
        d_model, num_mel_bins, _ = variables["encoder/conv1/weight"].shape
        return {
            "d_model": int(d_model), "num_mel_bins": int(num_mel_bins),
            "vocab_size": int(variables["decoder/embeddings/weight"].shape[0]),
            "encoder_layers": _num_layers(variables, "encoder"),
            "decoder_layers": _num_layers(variables, "decoder"),
            "encoder_attention_heads": int(_scalar(variables, "encoder/num_heads")),
            "decoder_attention_heads": int(_scalar(variables, "decoder/num_heads")),
            "encoder_ffn_dim": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "decoder_ffn_dim": int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
            "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
        }
    except KeyError as e:
        raise DataError(f"not a CTranslate2 Whisper model: it lacks the variable {e.args[0]!r}") from None


def whisper_state_dict(variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, *,
                       dtype: Literal["float32", "float16"] = "float32") -> dict[str, np.ndarray]:
    """The transformers `WhisperForConditionalGeneration` state dict of a CTranslate2 Whisper model.

    Fused projections are split (self-attention q|k|v, cross-attention k|v; k gets no bias), layer norms'
    gamma/beta become weight/bias, both sinusoidal position tables are copied, quantized weights are
    dequantized. CT2 folds no scale into the weights: it scales queries by 1/sqrt(head_dim) at run time, as
    transformers does. `proj_out.weight` is present only when the projection is not an alias of the token
    embeddings (untied); otherwise transformers ties it.

    Args:
        variables: `Ct2Model.variables`.
        aliases: `Ct2Model.aliases` (alias -> target).
        dtype: the dtype of every returned array.

    Returns:
        HF parameter name -> C-contiguous array (fresh copies, writable).

    Raises:
        DataError: a missing variable, a shape that does not fit, a setting Whisper cannot express, or a
            variable the mapping does not use.
    """
    aliases = aliases or {}
    variables = _dequantized({**variables, **{a: variables[t] for a, t in aliases.items()}})
    dims = whisper_dims(variables)
    _check_whisper_settings(variables, dims["d_model"])
    names = [("encoder/conv1/weight", "model.encoder.conv1.weight", slice(None)),
             ("encoder/conv1/bias", "model.encoder.conv1.bias", slice(None)),
             ("encoder/conv2/weight", "model.encoder.conv2.weight", slice(None)),
             ("encoder/conv2/bias", "model.encoder.conv2.bias", slice(None)),
             ("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight", slice(None)),
             ("decoder/embeddings/weight", "model.decoder.embed_tokens.weight", slice(None)),
             ("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight", slice(None))]
    names += _norm("encoder/layer_norm", "model.encoder.layer_norm") + _norm("decoder/layer_norm",
                                                                             "model.decoder.layer_norm")
    for side in ("encoder", "decoder"):
        names += [n for i in range(dims[f"{side}_layers"]) for n in _whisper_layer_names(side, i, dims["d_model"])]
    tied = aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    if not tied:
        names.append(("decoder/projection/weight", "proj_out.weight", slice(None)))
    used = {"decoder/projection/weight", *_SETTINGS}
    state: dict[str, np.ndarray] = {}
    for src, dst, rows in names:
        if src not in variables:
            raise DataError(f"the CTranslate2 Whisper model lacks the variable {src!r} (for {dst})")
        state[dst] = np.array(variables[src][rows], dtype=dtype, order="C")  # a copy: never a view of the file
        used.add(src)
    bias = variables.get("decoder/projection/bias")
    if bias is not None and np.any(bias):
        raise DataError("decoder/projection/bias is non-zero; Whisper's proj_out has no bias")
    unused = sorted(set(variables) - used - {"decoder/projection/bias"})
    if unused:
        raise DataError(f"CTranslate2 variables with no place in a transformers Whisper: {unused[:10]}"
                        + (f" and {len(unused) - 10} more" if len(unused) > 10 else ""))
    return state


def _special_ids(tokenizer: Any, tokens: Sequence[str]) -> dict[str, int]:
    """Token -> id for tokens the tokenizer must know (an unknown one raises, naming it)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise DataError(f"the Whisper tokenizer lacks the special tokens {missing}")
    return {t: vocab[t] for t in tokens}


def _tokenizer(tokenizer_json: Path, vocab_size: int) -> Any:
    """A `WhisperTokenizerFast` from the CT2 folder's tokenizer.json, with Whisper's special tokens marked special
    and the timestamp tokens <|0.00|>.. <|30.00|> that CT2's vocabulary adds, so it covers the model's vocab."""
    import tokenizers
    from transformers import WhisperTokenizerFast

    raw = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    specials = [t["content"] for t in sorted(raw.get("added_tokens", []), key=lambda t: t["id"]) if t["special"]]
    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json), extra_special_tokens=specials,
                               pad_token="<|endoftext|>")
    n_timestamps = vocab_size - len(tok)
    if n_timestamps < 0:
        raise DataError(f"{tokenizer_json}: {len(tok)} tokens, more than the model's vocabulary ({vocab_size})")
    tok.add_tokens([tokenizers.AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False,
                                          special=False) for i in range(n_timestamps)])
    return tok


def whisper_generation_settings(ct2_config: dict[str, Any], tokenizer: Any, *,
                                max_length: int) -> dict[str, Any]:
    """`GenerationConfig` fields for `generate(input_features, language=..., task=...)` from the CT2
    config.json (suppress_ids, suppress_ids_begin, lang_ids, alignment_heads) and the tokenizer's ids.

    transformers 5.23 builds the prompt <|startoftranscript|><|lang|><|task|><|notimestamps|> from
    `decoder_start_token_id`, `lang_to_id`, `task_to_id` and `no_timestamps_token_id`. `forced_decoder_ids`
    (deprecated, ignored when `language` or `task` is given) is written as openai/whisper-* have it,
    [[1, None], [2, <|transcribe|>]]: without it `generate(features)` detects the language and then adds no task
    token at all, and the model babbles.
    """
    ids = _special_ids(tokenizer, ["<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|translate|>",
                                   "<|notimestamps|>", "<|startofprev|>"])
    lang_ids = [int(i) for i in ct2_config.get("lang_ids") or []]
    lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
    eot = ids["<|endoftext|>"]
    settings: dict[str, Any] = {
        "decoder_start_token_id": ids["<|startoftranscript|>"], "bos_token_id": eot, "eos_token_id": eot,
        "pad_token_id": eot, "max_length": max_length,
        "suppress_tokens": [int(i) for i in ct2_config.get("suppress_ids") or []],
        "begin_suppress_tokens": [int(i) for i in ct2_config.get("suppress_ids_begin") or []],
        "no_timestamps_token_id": ids["<|notimestamps|>"], "prev_sot_token_id": ids["<|startofprev|>"],
        "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        "is_multilingual": bool(lang_ids), "lang_to_id": lang_to_id,
        "max_initial_timestamp_index": 50,  # 1.0 s, openai/whisper's default
        "return_timestamps": False,
        "forced_decoder_ids": [[1, None], [2, ids["<|transcribe|>"]]],
    }
    if ct2_config.get("alignment_heads"):
        settings["alignment_heads"] = [[int(a), int(b)] for a, b in ct2_config["alignment_heads"]]
    return settings


def _load_into_model(config: Any, state: dict[str, np.ndarray]) -> Any:
    """A `WhisperForConditionalGeneration` holding exactly `state` (strict: only the tied proj_out may be
    missing), built on the meta device so no random initialisation is spent."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False, assign=True)
    allowed_missing = {"proj_out.weight"} if config.tie_word_embeddings else set()
    missing = set(result.missing_keys) - allowed_missing
    if missing or result.unexpected_keys:
        raise DataError(f"the converted Whisper state dict does not fit WhisperForConditionalGeneration: missing "
                        f"{sorted(missing)[:10]}, unexpected {sorted(result.unexpected_keys)[:10]}")
    if config.tie_word_embeddings:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    on_meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    assert not on_meta, f"parameters left uninitialised: {on_meta[:5]}"
    return model.eval()


def convert_whisper(model_bin: Path | bytes | Sequence[Path], ct2_config: dict[str, Any], tokenizer_json: Path,
                    out_dir: Path, *, dtype: Literal["float32", "float16"] = "float32",
                    if_exists: Literal["replace", "keep"] = "replace") -> Path:
    """Convert a CTranslate2 Whisper model to a transformers folder, published atomically at `out_dir`.

    The folder holds `WhisperForConditionalGeneration` (config sizes read from the weights), its generation
    config (language/task prompts, suppressed tokens, alignment heads from the CT2 config.json), a
    `WhisperTokenizerFast` and a `WhisperFeatureExtractor` (so `WhisperProcessor.from_pretrained(out_dir)`
    works), and `sllm_ct2_source.json` recording the source spec and the sha256 of its model.bin.

    Args:
        model_bin: the CT2 model.bin, its bytes, or its parts in order (model.bin.part1, model.bin.part2, ...).
        ct2_config: the CT2 folder's config.json, parsed.
        tokenizer_json: the CT2 folder's tokenizer.json.
        out_dir: the folder to publish (built beside it, then renamed into place).
        dtype: the weights' dtype on disk.
        if_exists: "replace" an existing `out_dir`, or "keep" it (a concurrent converter got there first).

    Returns:
        `out_dir`.

    Raises:
        DataError: the model.bin is unreadable or not a Whisper model transformers can hold, or the tokenizer
            lacks Whisper's special tokens.

    Example:
        >>> convert_whisper([d / "model.bin.part1", d / "model.bin.part2"],      # doctest: +SKIP
        ...                 json.loads((d / "config.json").read_text()), d / "tokenizer.json", Path("whisper-base"))
    """
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    from sllm_lib.files import building_folder

    data, label = _source_bytes(model_bin)
    ct2 = read_ct2_model(data)
    if ct2.spec != "WhisperSpec":
        raise DataError(f"{label}: spec {ct2.spec!r}, expected 'WhisperSpec'")
    state = whisper_state_dict(ct2.variables, ct2.aliases, dtype=dtype)
    dims = whisper_dims(ct2.variables)
    tokenizer = _tokenizer(tokenizer_json, dims["vocab_size"])
    gen = whisper_generation_settings(ct2_config, tokenizer, max_length=dims["max_target_positions"])
    scale_embedding = _check_whisper_settings(ct2.variables, dims["d_model"])
    config = WhisperConfig(**dims, activation_function="gelu", scale_embedding=scale_embedding,
                           tie_word_embeddings="proj_out.weight" not in state, dtype=dtype,
                           **{k: gen[k] for k in ("decoder_start_token_id", "bos_token_id", "eos_token_id",
                                                  "pad_token_id", "suppress_tokens", "begin_suppress_tokens")})
    model = _load_into_model(config, state)
    model.generation_config = GenerationConfig(**gen)
    log.info("converted %s (%s rev %d, %d variables) to Whisper d_model=%d, %d+%d layers", label, ct2.spec,
             ct2.revision, len(ct2.variables), dims["d_model"], dims["encoder_layers"], dims["decoder_layers"])
    record = {"format": "CTranslate2 model.bin", "source": label, "spec": ct2.spec, "revision": ct2.revision,
              "sha256": hashlib.sha256(data).hexdigest(), "dtype": dtype}
    del data, ct2
    with building_folder(Path(out_dir), if_exists=if_exists) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(str(tmp))
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)
