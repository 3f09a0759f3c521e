"""The model on PyTorch's meta device, walked parameter by parameter; bytes per tensor as training stores them
(4-bit and 8-bit with their quantization constants, dtype rules, LoRA shapes)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from sllm_lib.memory.config import load_model_config
from sllm_lib.errors import JobSpecError
from sllm_lib.memory.constants import BNB_BLOCKSIZE, BNB_NESTED_BLOCKSIZE, LLM_GROUPS, MEL_FRAMES_PER_POSITION, Device
from sllm_lib.spec import ModelSpec, QuantSpec


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of the model as built from its config."""

    name: str
    group: str
    numel: int
    linear: tuple[int, int] | None  # (in, out) when it is the weight of a Linear bitsandbytes would replace
    keep_fp32: bool
    layer: int | None  # decoder layer index, for LLM layer parameters


@dataclass(frozen=True)
class LinearInfo:
    name: str
    in_features: int
    out_features: int
    group: str


@dataclass(frozen=True)
class ModelAccount:
    """Everything the planner needs to know about a model, read from its config on the meta device."""

    source: str
    multimodal: bool
    params: tuple[ParamInfo, ...]
    linears: tuple[LinearInfo, ...]
    lm_head_tied: bool
    text: dict[str, int]  # h, inter, h_q, h_kv, layers, vocab
    audio: dict[str, int] | None  # d, ffn, layers, frames, mels, proj_in, tokens_per_chunk
    vision: dict[str, int] | None = None  # d, ffn, layers, patches, proj_in, tokens_per_image, crops_per_image

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)


@functools.lru_cache(maxsize=8)
def account_model(model: ModelSpec) -> ModelAccount:
    """Build the model on the meta device from its config and walk its parameters (cached per model)."""
    config, source = load_model_config(model)
    meta = _meta_model(config, trust_remote_code=model.trust_remote_code)
    return _account(meta, config, source)


VISION_MODELLED = ("llava",)  # vision-language architectures the planner builds (Phi-3.5-vision as a Llava)


def _meta_model(config: Any, *, trust_remote_code: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration, VoxtralForConditionalGeneration

    from sllm_lib.models.builders import is_vision_model

    if is_vision_model(config) and config.model_type not in VISION_MODELLED:
        raise JobSpecError(
            f"memory planner: the vision-language architecture {config.model_type!r} is not modelled (modelled: "
            f"Llava-style models and Phi-3.5-vision; missing: its vision tower's layout and image tokens per image); "
            f"plan without --memory, or submit with --force to skip the memory check")
    with torch.device("meta"):
        if config.model_type == "voxtral":
            return VoxtralForConditionalGeneration(config)
        if config.model_type == "llava":
            return LlavaForConditionalGeneration(config)
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _quantized_linears(model: Any) -> set[str]:
    """Names of the Linears bitsandbytes replaces: transformers' own rule with sllm's skip list."""
    from torch import nn
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    from sllm_lib.models.builders import quantization_config

    skip = quantization_config(QuantSpec(bits=4)).llm_int8_skip_modules
    not_converted = HfQuantizer.get_modules_to_not_convert(model, skip, model._keep_in_fp32_modules)
    return {name for name, mod in model.named_modules()
            if type(mod) is nn.Linear and should_convert_module(name, not_converted)}


def _strict_fp32_patterns(model: Any) -> list[re.Pattern[str]]:
    out = []
    for mname, child in model.named_modules():
        for key in getattr(child, "_keep_in_fp32_modules_strict", None) or []:
            prefix = re.escape(mname) + r"\..*" if mname else ""
            out.append(re.compile(rf"^{prefix}(^|.*\.){re.escape(key)}(\.|$)"))
    return out


def _account(model: Any, config: Any, source: str) -> ModelAccount:
    from torch import nn

    quantized = _quantized_linears(model)
    fp32 = _strict_fp32_patterns(model)
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    head_mod = model.get_output_embeddings()
    head = {id(p) for p in head_mod.parameters()} if head_mod is not None else set()
    linear_of = {f"{n}.weight": m for n, m in model.named_modules() if n in quantized}
    params = []
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        group = _group(name, id(p), emb, head)
        mod = linear_of.get(name)
        layer = re.search(r"\blayers\.(\d+)\.", name) if group == "llm_layers" else None
        params.append(ParamInfo(name=name, group=group, numel=p.numel(),
                                linear=(mod.in_features, mod.out_features) if mod is not None else None,
                                keep_fp32=any(rx.search(name) for rx in fp32),
                                layer=int(layer.group(1)) if layer else None))
    renames = _stand_in_renames(config)
    linears = tuple(LinearInfo(_renamed(n, renames), m.in_features, m.out_features,
                               _group(f"{n}.weight", id(m.weight), emb, head))
                    for n, m in model.named_modules() if isinstance(m, nn.Linear))
    tied = bool(head) and head <= emb
    multimodal = hasattr(config, "audio_config") or hasattr(config, "vision_config")
    return ModelAccount(source=source, multimodal=multimodal, params=tuple(params), linears=linears,
                        lm_head_tied=tied, text=_text_dims(config), audio=_audio_dims(config),
                        vision=_vision_dims(config))


def _stand_in_renames(config: Any) -> dict[str, str]:
    from sllm_lib.memory.standins import STAND_INS

    stand = STAND_INS.get(getattr(config, "sllm_stand_in", None) or "")
    return stand.renames if stand is not None else {}


def _renamed(name: str, renames: dict[str, str]) -> str:
    """A stand-in's Linear under the model's own name (the last component), as LoRA targets name it."""
    head, _, last = name.rpartition(".")
    return f"{head}.{renames[last]}" if last in renames and head else renames.get(last, name)


def _group(name: str, pid: int, emb: set[int], head: set[int]) -> str:
    if "audio_tower." in name:
        return "audio_encoder"
    if "vision_tower." in name:
        return "vision_encoder"
    if "multi_modal_projector." in name:
        return "projector"
    if pid in emb:
        return "llm_embeddings"
    if pid in head:
        return "lm_head"
    return "llm_layers"


def _text_dims(config: Any) -> dict[str, int]:
    c = getattr(config, "text_config", None) or config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    return {"h": c.hidden_size, "inter": c.intermediate_size, "h_q": heads * head_dim, "h_kv": kv * head_dim,
            "layers": c.num_hidden_layers, "vocab": c.vocab_size}


def _audio_dims(config: Any) -> dict[str, int] | None:
    a = getattr(config, "audio_config", None)
    if a is None:
        return None
    stack = a.intermediate_size // a.hidden_size  # the projector stacks this many encoder frames per token
    return {"d": a.hidden_size, "ffn": a.intermediate_size, "layers": a.num_hidden_layers,
            "frames": a.max_source_positions, "mels": a.num_mel_bins, "proj_in": a.intermediate_size,
            "mel_frames": a.max_source_positions * MEL_FRAMES_PER_POSITION,
            "tokens_per_chunk": a.max_source_positions // stack}


def _vision_dims(config: Any) -> dict[str, int] | None:
    v = getattr(config, "vision_config", None)
    if v is None:
        return None
    side = v.image_size // v.patch_size
    layers = getattr(config, "vision_feature_layer", -1)
    n_feature = len(layers) if isinstance(layers, (list, tuple)) else 1  # Llava concatenates the selected layers
    tokens = getattr(config, "sllm_image_tokens", None) or getattr(config, "image_seq_length", None) or side * side
    return {"d": v.hidden_size, "ffn": v.intermediate_size, "layers": v.num_hidden_layers, "patches": side * side + 1,
            "proj_in": v.hidden_size * n_feature, "tokens_per_image": int(tokens),
            "crops_per_image": int(getattr(config, "sllm_crops_per_image", 1))}


# ------------------------------------------------------------------------------------------ bytes per tensor


def quant4_bytes(numel: int, *, storage_itemsize: int, double_quant: bool) -> tuple[int, int]:
    """(packed weight bytes, quantization-constant bytes) of one bitsandbytes 4-bit weight."""
    packed = (numel + 1) // (2 * storage_itemsize) * storage_itemsize
    blocks = -(-numel // BNB_BLOCKSIZE)
    code4 = 16 * 4
    if not double_quant:
        return packed, blocks * 4 + code4
    nested = -(-blocks // BNB_NESTED_BLOCKSIZE)
    return packed, blocks + nested * 4 + 4 + 256 * 4 + code4  # uint8 absmax, fp32 absmax2, offset, code2


def quant8_bytes(numel: int, out_features: int) -> tuple[int, int]:
    """(int8 weight bytes, per-row fp32 scale bytes) of one bitsandbytes 8-bit weight."""
    return numel, out_features * 4


_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "uint8": 1}
_PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class DtypeRules:
    """Bytes per element of each kind of tensor in one stage's setting."""

    float_param: int  # unquantized weights
    lora: int
    act: int  # activations (autocast dtype)
    residual: int  # residual stream
    quant: QuantSpec

    @classmethod
    def of(cls, stage: Any, device: Device) -> DtypeRules:
        precision = stage.train.precision if device == "gpu" else "fp32"  # the runner trains in fp32 on CPU
        e = _PRECISION_BYTES[precision]
        ds = stage.deepspeed is not None
        kbit = stage.quant.bits != "none"
        if ds and e == 2:
            float_param, lora, residual = 2, 2, 2
        elif kbit:
            float_param, lora, residual = 4, 4, 4
        else:
            float_param, lora, residual = e, 4, e
        return cls(float_param=float_param, lora=lora, act=e, residual=residual, quant=stage.quant)

    def param(self, p: ParamInfo) -> tuple[int, int]:
        """(partitionable bytes, constant bytes) of one parameter as stored for training."""
        q = self.quant
        if p.linear is not None and q.bits == 4:
            return quant4_bytes(p.numel, storage_itemsize=_ITEMSIZE[q.storage], double_quant=q.double_quant)
        if p.linear is not None and q.bits == 8:
            return quant8_bytes(p.numel, p.linear[1])
        return p.numel * (4 if p.keep_fp32 else self.float_param), 0

    def trainable_elements(self, p: ParamInfo) -> int:
        """Elements of the tensor that gets a gradient (a quantized weight's packed storage)."""
        if p.linear is not None and self.quant.bits == 4:
            return self.param(p)[0] // _ITEMSIZE[self.quant.storage]
        return p.numel


def weight_bytes_by_group(account: ModelAccount, rules: DtypeRules) -> dict[str, int]:
    """Stored bytes of the base weights (packed + constants) per module group."""
    out: dict[str, int] = {}
    for p in account.params:
        part, const = rules.param(p)
        out[p.group] = out.get(p.group, 0) + part + const
    return out


def lora_shapes(account: ModelAccount, targets: list[str]) -> list[LinearInfo]:
    """The Linears a LoRA with these targets wraps (LLM only, like `adapters.lora_target_regex`)."""
    if account.multimodal:
        from sllm_lib.models.adapters import lora_target_regex

        rx = re.compile(lora_target_regex(targets))
        return [lin for lin in account.linears if rx.fullmatch(lin.name)]
    names = set(targets)
    return [lin for lin in account.linears if lin.group == "llm_layers" and lin.name.rsplit(".", 1)[-1] in names]


def lora_numel(account: ModelAccount, lora: Any) -> int:
    """LoRA parameters: r * (in + out) per targeted Linear."""
    return sum(lora.r * (lin.in_features + lin.out_features) for lin in lora_shapes(account, lora.targets))


def _trainable(account: ModelAccount, p: ParamInfo, groups: list[str]) -> bool:
    if not account.multimodal:  # a text-only model: 'llm' is the whole model
        return "llm" in groups and p.group in LLM_GROUPS
    from sllm_lib.models.adapters import GROUP_PATTERNS

    return any(frag in p.name for g in groups for frag in GROUP_PATTERNS.get(g, ()))
