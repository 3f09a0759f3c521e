"""Memory planner: the predicted per-GPU memory of every training stage, from the model config alone.

`sllm plan SPEC --cluster X --memory` prints `plan_memory`'s tables; `sllm submit` refuses a stage that is
predicted not to fit the profile's `gpu_memory_gb` (unless `--force`). No weights are read: the model is
built on PyTorch's `meta` device from its config (a tiny preset, a local folder's config.json, the local
Hugging Face cache, or a snapshot bundled in `sllm_lib/model_configs/`) and its parameters are walked.

What is exact and what is a formula (GB = 1e9 bytes throughout):

* Weights, LoRA parameters, gradients and optimizer states are counted tensor by tensor, at the size the
  training code stores them (tested against real models):
  - bitsandbytes 4-bit Linear weight of n elements: ceil(n/2) bytes packed into the storage dtype, plus its
    quantization constants (blocks of 64: one fp32 absmax per block; with double quant one uint8 absmax per
    block + one fp32 absmax per 256 blocks + an fp32 offset + the 256-entry fp32 code of the second level),
    plus the 16-entry fp32 4-bit code; 8-bit: 1 byte per weight + one fp32 scale per output row. Which
    Linears are quantized follows `builders.quantization_config` and transformers' own skip matching.
  - Unquantized weights: at the load dtype (precision bf16 -> bfloat16, fp16 -> float16, fp32 -> float32);
    on a quantized base PEFT's `prepare_model_for_kbit_training` upcasts every unquantized weight to fp32;
    under DeepSpeed with bf16/fp16 the engine casts every floating weight to that dtype. Modules a model
    keeps in fp32 (`_keep_in_fp32_modules_strict`) stay fp32.
  - LoRA: r * (in + out) per targeted Linear, in fp32 (PEFT upcasts adapters), 16-bit under DeepSpeed.
  - Gradients: one per trainable parameter at its dtype. Plain DDP (no `deepspeed`, world > 1) adds its
    gradient buckets (another copy of the gradients). AdamW: 2 states per trainable parameter at the
    parameter's dtype (torch AdamW); under DeepSpeed 2 fp32 states + an fp32 master copy, gradients in the
    training dtype (ZeRO-0 in bf16/fp16 also keeps fp32 gradients).
  - ZeRO over the world size W: stage >= 1 divides optimizer states and master copy by W, >= 2 also the
    gradients, 3 also the weights (quantization constants stay whole) and adds the gathered working set
    (max(largest single module, 2 decoder layers): one in use, one prefetched); stage >= 1 adds a reduce
    bucket of hidden^2 elements (what "auto" becomes), stage 3 a prefetch bucket of 0.9 * hidden^2;
    offload_optimizer moves states + master (+ an fp32 gradient partition) to the CPU, offload_params the
    weights.
* Activations are a formula (every example at max_seq_len; attention through SDPA/flash, so no seq^2 term).
  Per token, per decoder layer, e = 2 bytes (bf16/fp16) or 4 (fp32), e_r = bytes of the residual stream
  (4 on a kbit-prepared base, whose fp32 embeddings make the stream fp32, or in fp32; else e):
      2*e_r*h (the two RMSNorm inputs) + 2*e*h (their outputs) + e*(h_q + 2*h_kv) (q, k, v after RoPE)
      + e*h_q (attention output) + 4*e*I (SwiGLU: gate, SiLU, up, product)
  (h hidden, h_q = heads*head_dim, h_kv = kv_heads*head_dim, I intermediate size; this is Korthikanti et
  al.'s count, arXiv:2205.05198, redone for RMSNorm + GQA + SwiGLU + flash attention.) Each LoRA target adds
  (1 + e)*in (dropout mask + the dropped input kept for lora_A's gradient) when dropout > 0, and e*r.
  With gradient checkpointing only each layer's input (e_r*h) is kept, plus one layer recomputed in the
  backward pass (its full activations and LoRA terms + 2*e_r*h of gradient buffers).
  Logits and loss: 12 bytes per token per vocabulary entry (the loss runs in fp32: log-softmax output, its
  incoming gradient and the logits' gradient are alive together in the backward pass), plus the final norm.
  Audio stages: up to max_seq_len // 375 thirty-second chunks per example (375 audio tokens each, inside
  max_seq_len). A frozen encoder runs without saving anything; its transient peak (mel + conv + one layer
  over 3000/1500 frames) is counted only where it exceeds the LLM's activations. A trained encoder keeps
  2*e_r*d + 6*e*d + 2*e*f per frame per layer (d width, f MLP size), or e_r*d with checkpointing; a
  trained projector keeps e*(4d + 2h) per audio token.
* Margin: 1 GB (CUDA context, cuBLAS and NCCL workspaces) + 10 % of everything above (allocator
  fragmentation, temporary buffers); on a CPU-only profile (the runner trains in fp32 there) the 10 % only.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from sllm_lib.errors import ArtifactNotFoundError, JobSpecError
from sllm_lib.spec import JobSpec, ModelSpec, QuantSpec

log = logging.getLogger(__name__)

GB = 1e9
MARGIN_FIXED_BYTES = 1_000_000_000  # CUDA context + cuBLAS/NCCL workspaces
MARGIN_FRACTION = 0.10  # allocator fragmentation and temporaries
BNB_BLOCKSIZE = 64  # bitsandbytes Params4bit default blocksize
BNB_NESTED_BLOCKSIZE = 256  # double quant: quantize_blockwise(absmax, blocksize=256)
AUDIO_CHUNK_S = 30
MEL_FRAMES = 3000  # 30 s of 10 ms hops; the encoder's second conv halves it to max_source_positions
LOSS_BYTES_PER_LOGIT = 12
CONFIG_DIR = Path(__file__).parent / "model_configs"
LLM_GROUPS = ("llm_embeddings", "llm_layers", "lm_head")
GROUP_LABELS = {"audio_encoder": "audio encoder", "projector": "projector", "llm_embeddings": "LLM embeddings",
                "llm_layers": "LLM layers", "lm_head": "lm_head"}
Device = Literal["gpu", "cpu"]


# ------------------------------------------------------------------------------------------ config


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
    from transformers import AutoConfig

    base = model.base
    if base.startswith("tiny:"):
        return _tiny_config(base[len("tiny:"):]), f"preset {base}"
    folder = Path(base).expanduser()
    if folder.is_absolute() or base.startswith("."):
        if not (folder / "config.json").is_file():
            raise ArtifactNotFoundError(f"model.base: {folder} is not a model folder (no config.json)")
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=model.trust_remote_code), str(folder)
    cached = _hf_cached_config(base, model.revision)
    if cached is not None:
        return AutoConfig.from_pretrained(str(cached.parent), trust_remote_code=model.trust_remote_code), \
            f"HF cache {cached.parent}"
    snapshot = bundled_config_path(base)
    if snapshot.is_file():
        if model.revision:
            log.warning("memory plan: %s@%s is not in the local cache; using the bundled snapshot of its main "
                        "revision", base, model.revision)
        return AutoConfig.from_pretrained(str(snapshot)), f"bundled snapshot {snapshot.name}"
    known = ", ".join(sorted(p.stem.replace("__", "/") for p in CONFIG_DIR.glob("*.json")))
    raise ArtifactNotFoundError(
        f"model.base: no config for {base!r}: it is not in the local Hugging Face cache and sllm ships no "
        f"snapshot of it (bundled: {known}). Download it once (`huggingface-cli download {base} config.json`), "
        f"or point model.base at a local folder holding its config.json (offline)")


def _tiny_config(preset: str) -> Any:
    from sllm_lib.models.builders import TINY_PRESETS, korean_char_vocab, tiny_llama_config, tiny_voxtral_config

    if preset not in TINY_PRESETS:
        raise JobSpecError(f"model.base: unknown tiny preset {preset!r}; available: "
                           + ", ".join(f"tiny:{p}" for p in TINY_PRESETS))
    vocab = korean_char_vocab()  # what materialize_tiny's tokenizer holds, without building it
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


# ------------------------------------------------------------------------------------------ parameter walk


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

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)


@functools.lru_cache(maxsize=8)
def account_model(model: ModelSpec) -> ModelAccount:
    """Build the model on the meta device from its config and walk its parameters (cached per model)."""
    config, source = load_model_config(model)
    meta = _meta_model(config, trust_remote_code=model.trust_remote_code)
    return _account(meta, config, source)


def _meta_model(config: Any, *, trust_remote_code: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, VoxtralForConditionalGeneration

    with torch.device("meta"):
        if config.model_type == "voxtral":
            return VoxtralForConditionalGeneration(config)
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
    linears = tuple(LinearInfo(n, m.in_features, m.out_features, _group(f"{n}.weight", id(m.weight), emb, head))
                    for n, m in model.named_modules() if isinstance(m, nn.Linear))
    tied = bool(head) and head <= emb
    return ModelAccount(source=source, multimodal=hasattr(config, "audio_config"), params=tuple(params),
                        linears=linears, lm_head_tied=tied, text=_text_dims(config), audio=_audio_dims(config))


def _group(name: str, pid: int, emb: set[int], head: set[int]) -> str:
    if "audio_tower." in name:
        return "audio_encoder"
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
            "tokens_per_chunk": a.max_source_positions // stack}


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


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class MemoryRow:
    name: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class StageMemory:
    """The predicted memory of one training stage on one GPU (and, when offloading, the CPU side)."""

    stage: str
    index: int
    kind: str
    rows: tuple[MemoryRow, ...]
    cpu_rows: tuple[MemoryRow, ...]
    world_size: int
    device: Device
    available_bytes: int | None
    params_total: int
    params_trainable: int
    setting: str
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def cpu_total(self) -> int:
        return sum(r.bytes for r in self.cpu_rows)

    @property
    def fits(self) -> bool | None:
        return None if self.available_bytes is None else self.total <= self.available_bytes

    def row(self, name: str) -> MemoryRow:
        """The row named `name` (KeyError if absent)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _uses_gpu(profile: Any) -> bool:
    """Whether the profile's training processes run on GPUs (else the runner trains in fp32 on the CPU)."""
    return bool(getattr(profile, "gpus", 0) or getattr(profile, "gpus_per_node", 0) or getattr(profile, "use_gpu", 0))


def plan_memory(job: JobSpec, profile: Any, *, device: Device | None = None) -> list[StageMemory]:
    """Predicted per-GPU memory of every training stage of `job` on `profile`.

    Args:
        job: the validated job spec.
        profile: its cluster profile (world_size, gpu_memory_gb).
        device: "gpu" (precision as set) or "cpu" (the runner's fp32); default from the profile.

    Returns:
        One StageMemory per training stage, in file order; for a swept stage, its largest grid point.

    Example:
        >>> for m in plan_memory(spec, profile): print(m.stage, m.total / 1e9, m.fits)
    """
    if job.model is None:
        return []
    if all(s.model_family == "vision" for s in job.stages if s.trains):
        # vision-language models (vision tower, image tokens) are not modelled yet: no prediction, no refusal
        log.info("memory planner: vision-language stages are not modelled; nothing predicted for %s", job.name)
        return []
    dev: Device = device or ("gpu" if _uses_gpu(profile) else "cpu")
    account = account_model(job.model)
    out = []
    for i, stage in enumerate(job.stages):
        if not stage.trains:
            continue
        out.append(_worst_sweep_point(job, i, stage, account, profile, dev))
    return out


def _worst_sweep_point(job: JobSpec, index: int, stage: Any, account: ModelAccount, profile: Any,
                       device: Device) -> StageMemory:
    from sllm_lib.spec import stage_with

    if job.sweep is None or job.sweep.stage != stage.name:
        return stage_memory(stage, index, account, profile, device=device)
    plans = [(stage_memory(stage_with(stage, point), index, account, profile, device=device), point)
             for point in job.sweep.points()]
    worst, point = max(plans, key=lambda mp: mp[0].total)
    note = "largest of the sweep's points: " + ", ".join(f"{k}={v}" for k, v in point.items())
    return replace(worst, notes=(*worst.notes, note))


def stage_memory(stage: Any, index: int, account: ModelAccount, profile: Any, *,
                 device: Device = "gpu") -> StageMemory:
    """The memory rows of one training stage (see the module docstring for every term)."""
    rules = DtypeRules.of(stage, device)
    world = max(1, profile.world_size)
    ds = stage.deepspeed
    zero = ds.stage if ds is not None else None
    rows, cpu = _weight_rows(account, rules, zero, ds, world)
    notes: list[str] = []
    n_lora = lora_numel(account, stage.lora) if stage.lora is not None else 0
    train_params = [p for p in account.params if _trainable(account, p, list(stage.trainable))]
    notes.extend(_quantized_trainable_notes(train_params, rules))
    lora_bytes = n_lora * rules.lora
    if n_lora:
        row = MemoryRow("LoRA adapters", _split(lora_bytes, world, zero == 3),
                        f"{n_lora:,} params (r={stage.lora.r}, {len(lora_shapes(account, stage.lora.targets))} "
                        f"Linears), {'fp32' if rules.lora == 4 else '16-bit'}" + _zero_note(zero == 3, world))
        (cpu if ds is not None and ds.offload_params == "cpu" else rows).append(row)
    grad_bytes = lora_bytes + sum(rules.param(p)[0] for p in train_params)  # a gradient has its param's dtype
    n_train = n_lora + sum(rules.trainable_elements(p) for p in train_params)
    rows += _training_state_rows(rules, ds, world, n_train, grad_bytes, cpu)
    rows += _activation_rows(stage, account, rules, notes)
    rows += _bucket_rows(stage, account.text["h"], rules)
    if stage.kind == "distill":
        # the teacher (a registry model, folder or hub id) is only resolvable at run time: its frozen weights and
        # its fp32 logits come on top; left out rather than guessed
        notes.append(f"distill: teacher {stage.teacher!r} not counted (its weights in the training dtype plus "
                     f"micro-batch x seq x vocab x 4 B of logits)")
    rows.append(_margin(rows, device))
    return StageMemory(stage=stage.name, index=index, kind=stage.kind, rows=tuple(rows), cpu_rows=tuple(cpu),
                       world_size=world, device=device,
                       available_bytes=int(profile.gpu_memory_gb * GB) if profile.gpu_memory_gb else None,
                       params_total=account.numel, params_trainable=n_train, setting=_setting(stage, world, device),
                       notes=tuple(notes))


def _split(n: int, world: int, partitioned: bool) -> int:
    return -(-n // world) if partitioned else n


def _zero_note(partitioned: bool, world: int) -> str:
    return f"; ZeRO: / {world} GPUs" if partitioned and world > 1 else ""


def _quantized_trainable_notes(train_params: list[ParamInfo], rules: DtypeRules) -> list[str]:
    bad = sorted({p.group for p in train_params if p.linear is not None and rules.quant.bits != "none"})
    return [f"{GROUP_LABELS[g]} is trained in full but its Linears are {rules.quant.bits}-bit quantized (they are "
            f"not in the quantization skip list): bitsandbytes weights cannot be trained" for g in bad]


def _weight_rows(account: ModelAccount, rules: DtypeRules, zero: int | None, ds: Any,
                 world: int) -> tuple[list[MemoryRow], list[MemoryRow]]:
    z3 = zero == 3
    offload = ds is not None and ds.offload_params == "cpu"
    gpu, cpu = [], []
    for group in GROUP_LABELS:
        members = [p for p in account.params if p.group == group]
        if not members:
            if group == "lm_head" and account.lm_head_tied:
                gpu.append(MemoryRow("weights: lm_head", 0, "tied to the embeddings"))
            continue
        part = sum(rules.param(p)[0] for p in members)
        const = sum(rules.param(p)[1] for p in members)
        row = MemoryRow(f"weights: {GROUP_LABELS[group]}", _split(part, world, z3) + const,
                        _weights_note(members, rules) + _zero_note(z3, world))
        (cpu if offload else gpu).append(row)
    if z3:
        gpu.append(_zero3_working_set(account, rules, offload))
    return gpu, cpu


def _weights_note(members: list[ParamInfo], rules: DtypeRules) -> str:
    n = sum(p.numel for p in members)
    q = [p for p in members if p.linear is not None]
    plain = "fp32" if rules.float_param == 4 else "16-bit"
    if q and rules.quant.bits == 4:
        qt = rules.quant
        dq = " double-quant" if qt.double_quant else ""
        return f"{n / 1e6:,.1f}M params: {len(q)} Linears 4-bit {qt.quant_type}{dq} ({qt.storage} storage), rest {plain}"
    if q and rules.quant.bits == 8:
        return f"{n / 1e6:,.1f}M params: {len(q)} Linears int8, rest {plain}"
    return f"{n / 1e6:,.1f}M params, {plain}"


def _zero3_working_set(account: ModelAccount, rules: DtypeRules, offload: bool) -> MemoryRow:
    layers: dict[int, int] = {}
    biggest = 0
    for p in account.params:
        size = sum(rules.param(p))
        biggest = max(biggest, size)
        if p.layer is not None:
            layers[p.layer] = layers.get(p.layer, 0) + size
    work = max(biggest, 2 * max(layers.values(), default=0))
    where = "fetched from the CPU" if offload else "all-gathered"
    return MemoryRow("ZeRO-3 gathered weights", work, f"{where}: max(largest module, 2 decoder layers)")


def _training_state_rows(rules: DtypeRules, ds: Any, world: int, n_train: int, grad_bytes: int,
                         cpu: list[MemoryRow]) -> list[MemoryRow]:
    rows = []
    if ds is None:
        rows.append(MemoryRow("gradients", grad_bytes, f"{n_train:,} trainable params at their dtype"))
        if world > 1:
            rows.append(MemoryRow("DDP gradient buckets", grad_bytes, "DDP's all-reduce buckets copy every gradient"))
        rows.append(MemoryRow("optimizer: AdamW states", 2 * grad_bytes, "exp_avg + exp_avg_sq at the params' dtype"))
        return rows
    zero = ds.stage
    half = rules.act == 2
    g_part = _split(n_train * (2 if half else 4), world, zero >= 2)
    rows.append(MemoryRow("gradients", g_part, f"{n_train:,} trainable params, {'16-bit' if half else 'fp32'}"
                          + _zero_note(zero >= 2, world)))
    if zero == 0 and half:
        rows.append(MemoryRow("gradients: fp32 accumulation", n_train * 4, "DeepSpeed's bf16/fp16 optimizer"))
    states = [MemoryRow("optimizer: AdamW states", _split(8 * n_train, world, zero >= 1),
                        "2 fp32 states per trainable param" + _zero_note(zero >= 1, world)),
              MemoryRow("optimizer: fp32 master weights", _split(4 * n_train, world, zero >= 1),
                        "DeepSpeed's fp32 copy of its partition" + _zero_note(zero >= 1, world))]
    if ds.offload_optimizer == "cpu":
        cpu += [*states, MemoryRow("optimizer: fp32 gradient partition", _split(4 * n_train, world, True),
                                   "for the CPU Adam step")]
    else:
        rows += states
    return rows


def _activation_rows(stage: Any, account: ModelAccount, rules: DtypeRules, notes: list[str]) -> list[MemoryRow]:
    t = stage.train
    tokens = t.per_device_bsz * t.max_seq_len
    d = account.text
    e, er = rules.act, rules.residual
    per_layer = 2 * er * d["h"] + 2 * e * d["h"] + e * (d["h_q"] + 2 * d["h_kv"]) + e * d["h_q"] + 4 * e * d["inter"]
    lora_tok = _lora_act_per_token(stage, account, e)
    L = d["layers"]
    ckpt = t.gradient_checkpointing
    how = (f"checkpointed: {L} layer inputs + 1 layer recomputed" if ckpt
           else f"{L} layers x {per_layer:,} B/token")
    if ckpt:
        layers = tokens * (L * er * d["h"] + per_layer + 2 * er * d["h"])
        lora = tokens * -(-lora_tok // L)  # only the recomputed layer's
    else:
        layers, lora = tokens * L * per_layer, tokens * lora_tok
    rows = [MemoryRow("activations: LLM layers", layers,
                      f"{t.per_device_bsz} x {t.max_seq_len} tokens, {how}")]
    if lora:
        rows.append(MemoryRow("activations: LoRA", lora, f"dropout {stage.lora.dropout}: mask + dropped input per "
                                                         f"target" if stage.lora.dropout else "lora_A outputs"))
    logits = tokens * (d["vocab"] * LOSS_BYTES_PER_LOGIT + (er + e) * d["h"])
    rows.append(MemoryRow("activations: logits + loss", logits, f"{tokens:,} tokens x {d['vocab']:,} vocab x 12 B "
                                                                f"(fp32 loss)"))
    rows += _audio_rows(stage, account, rules, sum(r.bytes for r in rows), notes)
    return rows


def _bucket_rows(stage: Any, hidden: int, rules: DtypeRules) -> list[MemoryRow]:
    """ZeRO's reduce (and ZeRO-3 prefetch) buckets, sized like the HF integration fills 'auto' (hidden^2)."""
    ds = stage.deepspeed
    if ds is None or ds.stage == 0:
        return []
    e = rules.act
    reduce = hidden * hidden if ds.reduce_bucket_size == "auto" else ds.reduce_bucket_size
    prefetch = 0
    if ds.stage == 3:
        prefetch = int(0.9 * hidden * hidden) if ds.stage3_prefetch_bucket_size == "auto" \
            else ds.stage3_prefetch_bucket_size
    what = f"reduce bucket {reduce:,}" + (f" + prefetch {prefetch:,}" if prefetch else "")
    return [MemoryRow("ZeRO buckets", e * (reduce + prefetch), f"{what} elements")]


def _lora_act_per_token(stage: Any, account: ModelAccount, e: int) -> int:
    """LoRA activation bytes per token, summed over every decoder layer."""
    lora = stage.lora
    if lora is None or "lora" not in stage.trainable:
        return 0
    per_in = (1 + e) if lora.dropout > 0 else 0
    return sum(per_in * lin.in_features + e * lora.r for lin in lora_shapes(account, lora.targets))


def _audio_rows(stage: Any, account: ModelAccount, rules: DtypeRules, llm_acts: int,
                notes: list[str]) -> list[MemoryRow]:
    a = account.audio
    if a is None or not any(r.kind in ("asr", "speech_qa") for r in stage.data.train):
        return []
    t = stage.train
    chunks = max(1, t.max_seq_len // a["tokens_per_chunk"]) * t.per_device_bsz
    e, er = rules.act, rules.residual
    frames, d, f = a["frames"], a["d"], a["ffn"]
    rows = []
    if "audio_encoder" in stage.trainable:
        layer = 2 * er * d + 6 * e * d + 2 * e * f
        per_frame = a["layers"] * er * d + layer if t.gradient_checkpointing else a["layers"] * layer
        convs = MEL_FRAMES * (a["mels"] + 2 * d) * e + frames * d * e
        rows.append(MemoryRow("activations: audio encoder", chunks * (frames * per_frame + convs),
                              f"trained: {chunks} chunks x {frames} frames"))
    else:
        peak = chunks * (MEL_FRAMES * (4 * a["mels"] + 2 * e * d) + frames * e * (6 * d + f))
        rows.append(MemoryRow("activations: audio encoder", max(0, peak - llm_acts),
                              f"frozen forward, {chunks} chunks x {frames} frames: transient {_gb(peak)}"))
    if "projector" in stage.trainable:
        audio_tokens = chunks * a["tokens_per_chunk"]
        rows.append(MemoryRow("activations: projector", audio_tokens * e * (a["proj_in"] + 2 * account.text["h"]),
                              f"{audio_tokens:,} audio tokens"))
    notes.append(f"audio: up to {chunks // t.per_device_bsz} x {AUDIO_CHUNK_S} s chunks per example "
                 f"({a['tokens_per_chunk']} tokens each, inside max_seq_len {t.max_seq_len})")
    return rows


def _margin(rows: list[MemoryRow], device: Device) -> MemoryRow:
    sub = sum(r.bytes for r in rows)
    if device == "cpu":
        return MemoryRow("allocator margin", int(MARGIN_FRACTION * sub), f"{MARGIN_FRACTION:.0%} of the rest")
    return MemoryRow("CUDA context + allocator margin", MARGIN_FIXED_BYTES + int(MARGIN_FRACTION * sub),
                     f"1 GB + {MARGIN_FRACTION:.0%} of the rest")


def _setting(stage: Any, world: int, device: Device) -> str:
    t, q, ds = stage.train, stage.quant, stage.deepspeed
    quant = "unquantized" if q.bits == "none" else f"{q.bits}-bit" + (f" {q.quant_type}" if q.bits == 4 else "")
    if ds is None:
        par = "DDP" if world > 1 else "single process"
    else:
        off = [k for k, v in (("optimizer", ds.offload_optimizer), ("params", ds.offload_params)) if v == "cpu"]
        par = f"ZeRO-{ds.stage}" + (f" offload {'+'.join(off)}" if off else "")
    prec = t.precision if device == "gpu" else "fp32 (CPU)"
    ckpt = "checkpointing" if t.gradient_checkpointing else "no checkpointing"
    glob = t.per_device_bsz * t.grad_accum * world
    return (f"{quant}, {prec}, {par} x {world}, micro-batch {t.per_device_bsz} x accum {t.grad_accum} "
            f"(global {glob}), seq {t.max_seq_len}, {ckpt}")


# ------------------------------------------------------------------------------------------ suggestions

# Rough relative slowdown of each change (the search minimises the sum; ties go to fewer changes):
# ZeRO-2 costs about what DDP's all-reduce does, ZeRO-3 adds a weight all-gather per forward and backward,
# checkpointing a second forward, each halving of the micro-batch some GPU efficiency, offloading PCIe
# traffic and CPU Adam, and 4-bit weights change the model (last resort).
_ZERO_COST = {None: 0.0, 0: 0.0, 1: 0.03, 2: 0.05, 3: 0.25}
_COST_CHECKPOINTING = 0.33
_COST_PER_HALVING = 0.10
_COST_OFFLOAD_OPTIMIZER = 0.5
_COST_OFFLOAD_PARAMS = 1.0
_COST_QUANT4 = 1.5


@dataclass(frozen=True)
class Suggestion:
    """The cheapest set of spec changes predicted to make a stage fit."""

    stage: str
    index: int
    changes: dict[str, Any]  # dotted stage field -> value
    memory: StageMemory

    @property
    def set_args(self) -> list[str]:
        """The changes as `--set` values for `sllm plan|submit`."""
        return [f"stages[{self.index}].{k}={_yaml_scalar(v)}" for k, v in self.changes.items()]

    def describe(self) -> str:
        """One line: the --set options and the predicted memory with them."""
        sets = " ".join(f"--set {a}" for a in self.set_args)
        avail = self.memory.available_bytes or 0
        return f"{sets}  (predicted {_gb(self.memory.total)} of {_gb(avail)})"


def _yaml_scalar(v: Any) -> str:
    return "true" if v is True else "false" if v is False else str(v)


@functools.lru_cache(maxsize=1)
def _stage_adapter() -> Any:
    from pydantic import TypeAdapter

    from sllm_lib.spec import StageSpec

    return TypeAdapter(StageSpec)


def stage_variant(stage: Any, changes: dict[str, Any]) -> Any:
    """A validated copy of `stage` with dotted fields set (blocks such as `deepspeed` created when absent).

    Raises:
        JobSpecError: the combination is not a valid stage.
    """
    from pydantic import ValidationError

    raw = stage.model_dump(mode="json")
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    try:
        variant = _stage_adapter().validate_python(raw)
    except ValidationError as exc:
        raise JobSpecError(f"stage {stage.name!r} with {changes}: {exc.errors()[0]['msg']}") from exc
    from sllm_lib.deepspeed_config import stage_config_problems

    problems = stage_config_problems(variant)  # what load_job_spec checks too (a config_file's settings)
    if problems:
        raise JobSpecError(f"stage {stage.name!r} with {changes}: {problems[0]}")
    return variant


def _candidates(stage: Any) -> list[tuple[float, dict[str, Any]]]:
    """Every combination of the knobs, with its cost, cheapest first."""
    import itertools

    t, ds, q = stage.train, stage.deepspeed, stage.quant
    cur = ds.stage if ds is not None else None
    zero = [({}, 0.0)] + [({"deepspeed.stage": z}, _ZERO_COST[z] - _ZERO_COST[cur])
                          for z in (2, 3) if cur is None or z > cur]
    ckpt = [({}, 0.0)] + ([] if t.gradient_checkpointing else [({"train.gradient_checkpointing": True},
                                                                  _COST_CHECKPOINTING)])
    mb = [({}, 0.0)] + [({"train.per_device_bsz": m, "train.grad_accum": t.grad_accum * t.per_device_bsz // m},
                         _COST_PER_HALVING * math.log2(t.per_device_bsz / m))
                        for m in range(t.per_device_bsz - 1, 0, -1) if t.per_device_bsz % m == 0]
    off_o = [({}, 0.0)] + ([] if ds is not None and ds.offload_optimizer == "cpu"
                           else [({"deepspeed.offload_optimizer": "cpu"}, _COST_OFFLOAD_OPTIMIZER)])
    off_p = [({}, 0.0)] + ([] if ds is not None and ds.offload_params == "cpu"
                           else [({"deepspeed.offload_params": "cpu"}, _COST_OFFLOAD_PARAMS)])
    quant = [({}, 0.0)] + ([] if q.bits == 4 else [({"quant.bits": 4}, _COST_QUANT4)])
    out = []
    for combo in itertools.product(zero, ckpt, mb, off_o, off_p, quant):
        changes = {k: v for part, _ in combo for k, v in part.items()}
        if not changes or (ds is None and any(k.startswith("deepspeed.") for k in changes)
                           and "deepspeed.stage" not in changes):
            continue  # a new deepspeed block always names its ZeRO stage
        out.append((sum(c for _, c in combo), changes))
    out.sort(key=lambda cc: (cc[0], len(cc[1])))
    return out


def suggest(job: JobSpec, profile: Any, memory: StageMemory, *, device: Device | None = None) -> Suggestion | None:
    """The cheapest change to a stage that is predicted to fit `profile.gpu_memory_gb`.

    Tries combinations of: ZeRO-2/3, gradient checkpointing, a smaller micro-batch with grad_accum raised to keep
    the global batch, optimizer / parameter offload to the CPU, and 4-bit weights; ordered by a rough cost.

    Returns:
        None when the stage already fits, the profile gives no GPU memory, or nothing fits.
    """
    if memory.fits is not False or job.model is None:
        return None
    stage = job.stages[memory.index]
    account = account_model(job.model)
    dev: Device = device or memory.device
    for _, changes in _candidates(stage):
        try:
            variant = stage_variant(stage, changes)
        except JobSpecError:
            continue
        m = stage_memory(variant, memory.index, account, profile, device=dev)
        if m.fits:
            return Suggestion(stage=stage.name, index=memory.index, changes=changes, memory=m)
    return None


# ------------------------------------------------------------------------------------------ rendering


def render_stage(m: StageMemory) -> Any:
    """A rich Table of one stage's rows, total, available memory and verdict."""
    from rich.table import Table

    title = (f"{m.stage} ({m.kind}): {_count(m.params_total)} params, {_count(m.params_trainable)} trainable, "
             f"per {'GPU' if m.device == 'gpu' else 'process'}")
    table = Table(title=title, caption=m.setting, title_justify="left", caption_justify="left")
    table.add_column("component")
    table.add_column("memory", justify="right")
    table.add_column("note", overflow="fold")
    for r in m.rows:
        table.add_row(r.name, _gb(r.bytes), r.note)
    table.add_section()
    table.add_row("[bold]total[/]", f"[bold]{_gb(m.total)}[/]", "")
    if m.available_bytes is not None:
        verdict = "[green]fits[/]" if m.fits else "[red]does NOT fit[/]"
        table.add_row("available", _gb(m.available_bytes), f"{verdict} ({100 * m.total / m.available_bytes:.0f} %)")
    if m.cpu_rows:
        table.add_section()
        for r in m.cpu_rows:
            table.add_row(f"CPU: {r.name}", _gb(r.bytes), r.note)
        table.add_row("[bold]CPU total per process[/]", f"[bold]{_gb(m.cpu_total)}[/]", "offloaded to host memory")
    return table


def render_plan(memories: list[StageMemory], suggestions: dict[str, Suggestion | None]) -> list[Any]:
    """Renderables for `sllm plan --memory`: one table per stage, its notes and, when it does not fit, a fix."""
    out: list[Any] = []
    for m in memories:
        out.append(render_stage(m))
        out += [f"  note: {n}" for n in m.notes]
        if m.fits is False:
            s = suggestions.get(m.stage)
            out.append(f"  cheapest change that fits: {s.describe()}" if s is not None
                       else "  no combination of ZeRO, checkpointing, micro-batch, offload and 4-bit fits this GPU")
    return out
