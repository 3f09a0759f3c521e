"""Architectures whose modeling code ships with the weights (trust_remote_code), planned through a transformers
architecture with the same parameter shapes, so no downloaded code runs in the planner and a bundled snapshot
suffices.

* `exaone` (EXAONE-3.5): a Llama decoder (RMSNorm, GQA, RoPE, SwiGLU) under other module names; its Linears
  `out_proj`, `c_fc_0` (gate), `c_fc_1` (up), `c_proj` (down) are Llama's `o_proj`, `gate_proj`, `up_proj`,
  `down_proj`, so LoRA targets written with EXAONE's names resolve.
* `phi3_v` (Phi-3.5-vision): the phi-3-mini decoder (transformers' Phi3: fused `qkv_proj` and `gate_up_proj`)
  under a CLIP ViT-L/14-336 vision tower (`CLIPVisionModel`, as Phi3V builds it) and a 2-layer GELU MLP
  projector from 4 x 1024 (2x2 merged patch features) to the text width: a Llava built from those configs has
  exactly these tensors (it lacks only Phi3V's two 4096-element separators, `glb_GN` and `sub_GN`). Image tokens
  per image follow Phi3V's HD transform at the processor's default `num_crops` (see `phi3v_image_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StandIn:
    native: str  # the transformers model_type it is planned as
    renames: dict[str, str]  # native Linear name -> the model's own name (what LoRA targets say)
    build: Callable[[dict[str, Any]], Any]  # raw config.json -> the native transformers config


PHI3V_NUM_CROPS = 4  # Phi3VProcessor's default for single images
PHI3V_SEPARATOR_PARAMS = 2 * 4096  # glb_GN + sub_GN, not in the Llava stand-in


def phi3v_image_tokens(num_crops: int = PHI3V_NUM_CROPS, tokens_per_crop_side: int = 12) -> int:
    """Most image tokens one image can take: over the HD layouts h x w <= num_crops, (h*w + 1) * 144 crop tokens
    + 1 separator + (h + 1) * 12 row separators (Phi3V's `get_number_of_image_tokens`)."""
    per_crop = tokens_per_crop_side ** 2
    return max((h * w + 1) * per_crop + 1 + (h + 1) * tokens_per_crop_side
               for h in range(1, num_crops + 1) for w in range(1, num_crops + 1) if h * w <= num_crops)


def _exaone(raw: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_layers"], num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        head_dim=raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"],
        vocab_size=raw["vocab_size"], tie_word_embeddings=raw.get("tie_word_embeddings", False),
        max_position_embeddings=raw.get("max_position_embeddings", 4096),
        rms_norm_eps=raw.get("layer_norm_epsilon", 1e-5), hidden_act=raw.get("activation_function", "silu"),
        attention_bias=False, mlp_bias=False)


def _phi3_v(raw: dict[str, Any]) -> Any:
    from transformers import CLIPVisionConfig, LlavaConfig, Phi3Config

    img = raw.get("img_processor") or {}
    if img.get("model_name", "openai/clip-vit-large-patch14-336") != "openai/clip-vit-large-patch14-336":
        raise ValueError(f"phi3_v with vision tower {img['model_name']!r}: only CLIP ViT-L/14-336 is modelled")
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = Phi3Config(
        hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        vocab_size=raw["vocab_size"], tie_word_embeddings=raw.get("tie_word_embeddings", False),
        max_position_embeddings=raw.get("max_position_embeddings", 4096), pad_token_id=raw.get("pad_token_id"),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5))
    # 2x2 neighbouring patch features are concatenated: the projector reads 4 x 1024 (Llava: 4 feature layers)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                         vision_feature_layer=[-2, -2, -2, -2], vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_token_index=raw["vocab_size"] - 1)
    config.sllm_image_tokens = phi3v_image_tokens()
    config.sllm_crops_per_image = PHI3V_NUM_CROPS + 1  # the HD sub-crops and the global view, 336 x 336 each
    return config


STAND_INS: dict[str, StandIn] = {
    "exaone": StandIn("llama", {"o_proj": "out_proj", "gate_proj": "c_fc_0", "up_proj": "c_fc_1",
                                "down_proj": "c_proj"}, _exaone),
    "phi3_v": StandIn("llava", {}, _phi3_v),
}


def stand_in_config(raw: dict[str, Any]) -> Any | None:
    """The native config a remote-code architecture is planned as (None when transformers has it, or no stand-in
    exists); it carries `sllm_stand_in` (the original model_type) for the accounting's name mapping."""
    stand = STAND_INS.get(raw.get("model_type", ""))
    if stand is None:
        return None
    config = stand.build(raw)
    config.sllm_stand_in = raw["model_type"]
    return config
