"""Mini presets as references: validated by name, planned without their wheels (80 mel bins from the config)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sllm_lib.memory.config import load_model_config
from sllm_lib.models.mini import SMOLLM2_135M, SPEECH_TOKENS, WHISPER_BASE, mini_config, preset_dir
from sllm_lib.spec import ModelSpec


def test_mini_presets_validate_by_name():
    assert ModelSpec(base="mini:voxtral").base == "mini:voxtral"
    with pytest.raises(ValidationError, match="unknown mini preset; presets: mini:voxtral, mini:whisper, mini:smollm2"):
        ModelSpec(base="mini:llama")


def test_the_planner_reads_the_mini_voxtral_config_without_building_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLLM_HOME", str(tmp_path))
    monkeypatch.setenv("SLLM_WHEELS", str(tmp_path / "no-wheels"))
    config, source = load_model_config(ModelSpec(base="mini:voxtral"))
    assert source == "preset mini:voxtral"
    a, t = config.audio_config, config.text_config
    assert (a.num_mel_bins, a.hidden_size, a.num_hidden_layers, a.max_source_positions) == (80, 512, 6, 300)  # a 6 s window
    assert a.intermediate_size == 4 * a.hidden_size  # the projector's input: 4 stacked encoder frames
    assert (t.hidden_size, t.num_hidden_layers, t.num_key_value_heads) == (576, 30, 3)
    assert t.vocab_size == SMOLLM2_135M["vocab_size"] + len(SPEECH_TOKENS)
    assert config.audio_token_id == SMOLLM2_135M["vocab_size"] + SPEECH_TOKENS.index("[AUDIO]")
    assert not (tmp_path / "no-wheels").exists() and not preset_dir("voxtral").exists()  # nothing fetched or built


def test_whisper_and_smollm2_planning_configs():
    w = mini_config("whisper")
    assert (w.num_mel_bins, w.d_model, w.encoder_layers, w.vocab_size) == (80, 512, 6, WHISPER_BASE["vocab_size"])
    s = mini_config("smollm2")
    assert s.model_type == "llama" and s.tie_word_embeddings and s.rope_parameters["rope_theta"] == 100000.0
