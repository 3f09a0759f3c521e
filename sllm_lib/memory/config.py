"""Where a model's config comes from: a tiny preset, a local folder, the Hugging Face cache, or a snapshot bundled
in `sllm_lib/model_configs/` (no download, no weights)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sllm_lib.errors import ArtifactNotFoundError, JobSpecError
from sllm_lib.memory.constants import CONFIG_DIR
from sllm_lib.spec import ModelSpec

log = logging.getLogger(__name__)


def bundled_config_path(repo_id: str) -> Path:
    """Where the architecture snapshot of a hub id is shipped (`org/name` -> model_configs/org__name.json)."""
    return CONFIG_DIR / (repo_id.replace("/", "__") + ".json")


def load_model_config(model: ModelSpec) -> tuple[Any, str]:
    """The transformers config of `model.base` without reading weights or touching the network.

    Returns:
        (config, source) where source says where the config came from.

    Raises:
        JobSpecError: an unknown tiny preset.
        ArtifactNotFoundError: no config found locally; the message says what to do.
    """

    base = model.base
    if base.startswith("tiny:"):
        return _tiny_config(base[len("tiny:"):]), f"preset {base}"
    if base.startswith("mini:"):
        from sllm_lib.models.mini import mini_config

        return mini_config(base[len("mini:"):]), f"preset {base}"
    folder = Path(base).expanduser()
    if folder.is_absolute() or base.startswith("."):
        if not (folder / "config.json").is_file():
            raise ArtifactNotFoundError(f"model.base: {folder} is not a model folder (no config.json)")
        return _from_file(folder / "config.json", model.trust_remote_code, str(folder))
    cached = _hf_cached_config(base, model.revision)
    if cached is not None:
        return _from_file(cached, model.trust_remote_code, f"HF cache {cached.parent}")
    snapshot = bundled_config_path(base)
    if snapshot.is_file():
        if model.revision:
            log.warning("memory plan: %s@%s is not in the local cache; using the bundled snapshot of its main "
                        "revision", base, model.revision)
        return _from_file(snapshot, False, f"bundled snapshot {snapshot.name}")
    known = ", ".join(sorted(p.stem.replace("__", "/") for p in CONFIG_DIR.glob("*.json")))
    raise ArtifactNotFoundError(
        f"model.base: no config for {base!r}: it is not in the local Hugging Face cache and sllm ships no "
        f"snapshot of it (bundled: {known}). Download it once (`huggingface-cli download {base} config.json`), "
        f"or point model.base at a local folder holding its config.json (offline)")


def _from_file(path: Path, trust_remote_code: bool, source: str) -> tuple[Any, str]:
    """A config.json as transformers reads it, or, for an architecture whose code ships with the weights, the
    native stand-in with the same tensors (`standins.py`: no downloaded code runs in the planner)."""
    import json

    from transformers import AutoConfig

    from sllm_lib.memory.standins import STAND_INS, stand_in_config

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactNotFoundError(f"model.base: {path} is not a readable config.json ({exc})") from exc
    try:
        stand_in = stand_in_config(raw)
    except (KeyError, ValueError) as exc:
        raise JobSpecError(f"model.base: {path}: cannot plan model_type {raw.get('model_type')!r} ({exc}); "
                           f"expected the published config of the model") from exc
    if stand_in is not None:
        return stand_in, f"{source} (as {STAND_INS[raw['model_type']].native})"
    if path.name == "config.json":
        return AutoConfig.from_pretrained(str(path.parent), trust_remote_code=trust_remote_code), source
    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code), source


def _tiny_config(preset: str) -> Any:
    from sllm_lib.models.builders import (
        TINY_PRESETS, korean_char_vocab, tiny_llama_config, tiny_llava_config, tiny_voxtral_config
    )

    if preset not in TINY_PRESETS:
        raise JobSpecError(f"model.base: unknown tiny preset {preset!r}; available: "
                           + ", ".join(f"tiny:{p}" for p in TINY_PRESETS))
    vocab = korean_char_vocab()  # what materialize_tiny's tokenizer holds, without building it
    if preset == "llava":
        return tiny_llava_config(vocab_size=len(vocab) + 1, image_token_index=len(vocab))  # + "<image>"
    if preset.startswith("llama"):
        return tiny_llama_config(vocab_size=len(vocab), n_layer=1 if preset == "llama-half" else 2)
    return tiny_voxtral_config(vocab_size=len(vocab), audio_token_id=vocab.index("[AUDIO]"))


def _hf_cached_config(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except (ImportError, ValueError, OSError) as exc:  # a malformed repo id, an unreadable cache
        log.debug("no cached config for %s: %s", repo_id, exc)
        return None
    return Path(hit) if isinstance(hit, str) else None
