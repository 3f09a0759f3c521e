"""Adapter chains: apply upstream stage outputs to a base, add this stage's LoRA, pick trainable groups.

A training stage's output folder holds `adapter/` (a standard PEFT LoRA adapter, when the stage
trained one) and `modules.safetensors` (full weights of fully trained modules such as the projector,
keyed by base-model parameter names). A later stage applies the chain oldest first: load modules,
merge the LoRA into the base, then adds its own LoRA on top.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
MODULES_FILE = "modules.safetensors"
# parameter-name fragments of each trainable group in the Voxtral architecture
GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "projector": ("multi_modal_projector.",),
    "audio_encoder": ("audio_tower.",),
    "llm": ("language_model.", "lm_head."),
}
# a text-only causal LM is all LLM
CAUSAL_GROUP_PATTERNS: dict[str, tuple[str, ...]] = {"llm": ("",)}


def is_multimodal(config: Any) -> bool:
    """Speech or vision LLMs: an encoder + projector + language model (LoRA and 'llm' mean the language model)."""
    from sllm_lib.models.builders import is_speech_model, is_vision_model

    return is_speech_model(config) or is_vision_model(config)


def group_patterns(model: Any) -> dict[str, tuple[str, ...]]:
    """The trainable groups of this model's architecture."""
    return GROUP_PATTERNS if is_multimodal(base_of(model).config) else CAUSAL_GROUP_PATTERNS


def apply_chain(model: Any, chain: list[Path]) -> Any:
    """Apply upstream outputs oldest first (modules, then LoRA merged into the base)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    for out in chain:
        modules = out / MODULES_FILE
        if modules.is_file():
            state = load_file(str(modules))
            missing = [k for k in state if k not in dict(model.named_parameters())]
            if missing:
                raise ValueError(f"{modules}: {len(missing)} weights do not exist in the base model, e.g. {missing[0]}")
            model.load_state_dict(state, strict=False)
        adapter = out / ADAPTER_DIR
        if adapter.is_dir():
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        log.info("applied upstream output %s", out)
    return model


def chain_value(outputs: list[Path], key: str) -> Any:
    """A prompt setting a chain of stage outputs was trained with (the latest stage that set one), from their
    manifests; a merged model's manifest carries it on, so evaluation prompts as training did."""
    from sllm_lib.files import read_manifest

    value = None
    for out in outputs:
        manifest = read_manifest(Path(out)) or {}
        if manifest.get(key):
            value = manifest[key]
    return value


def chain_system_prompt(outputs: list[Path]) -> str | None:
    """The system prompt a causal LM was trained with (see chain_value)."""
    return chain_value(outputs, "system_prompt")


def lora_target_regex(targets: list[str], *, speech: bool = True) -> str:
    """LoRA only inside the language model (the Whisper encoder has q_proj/k_proj/v_proj too); in a text-only
    causal LM every Linear with a target name."""
    names = "|".join(sorted(set(targets)))
    return rf".*language_model.*\.({names})$" if speech else rf".*\.({names})$"


def prepare_trainable(model: Any, *, lora: Any, trainable: list[str], gradient_checkpointing: bool) -> Any:
    """Add this stage's LoRA (if any) and set requires_grad on exactly the chosen groups."""
    from peft import LoraConfig, get_peft_model

    speech = is_multimodal(model.config)
    patterns = group_patterns(model)
    unknown = [g for g in trainable if g != "lora" and g not in patterns]
    if unknown:
        raise ValueError(f"trainable {unknown} do not exist in a text-only causal LM (it has: lora, llm)")
    if "audio_encoder" in trainable and not any("audio_tower." in n for n, _ in model.named_parameters()):
        raise ValueError("trainable 'audio_encoder': this model has no audio encoder")
    for p in model.parameters():
        p.requires_grad_(False)
    quantized = getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if lora is not None:
        cfg = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora_target_regex(lora.targets, speech=speech),
            bias="none", task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_("lora" in trainable)
        elif any(frag in name for g in trainable for frag in patterns.get(g, ())):
            p.requires_grad_(True)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_train == 0:
        raise ValueError(f"trainable={trainable} selects no parameters in this model")
    return model


def base_of(model: Any) -> Any:
    """The underlying transformers model (unwraps PEFT)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_stage_weights(model: Any, out_dir: Path, *, trainable: list[str]) -> dict[str, Any]:
    """Write adapter/ and modules.safetensors for the groups this stage trained; return what was written."""
    from safetensors.torch import save_file

    written: dict[str, Any] = {}
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(out_dir / ADAPTER_DIR))
        written["adapter"] = ADAPTER_DIR
    full_groups = [g for g in trainable if g != "lora"]
    if full_groups:
        patterns = group_patterns(model)
        frags = tuple(f for g in full_groups for f in patterns[g])
        state = {
            n: p.detach().to("cpu").contiguous().clone()
            for n, p in base_of(model).named_parameters()
            if any(f in n for f in frags) and "lora_" not in n
        }
        save_file(state, str(out_dir / MODULES_FILE))
        written["modules"] = {"file": MODULES_FILE, "groups": full_groups, "tensors": len(state)}
    return written
