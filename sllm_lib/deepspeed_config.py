"""DeepSpeed configs from a stage's `deepspeed:` block, and the checks a config must pass before submission.

The batch fields stay "auto": the HF Trainer fills them from the same TrainingArguments sllm builds from
`train:` (micro-batch, grad_accum, world size, clipping, precision), so the two never disagree. Bucket sizes
left "auto" are filled here from the language model's hidden size, as the Trainer would, because a composite
config (Voxtral) has no top-level `hidden_size` for it to read. No torch import: `sllm validate` uses this.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: spec imports this module to check each stage's config at load
    from sllm_lib.spec import DeepSpeedSpec, QuantSpec


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str) -> dict[str, Any]:
    """The explicit DeepSpeed JSON of `deepspeed.config_file` (ValueError naming the file and what is wrong)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of DeepSpeed settings, got {type(raw).__name__}")
    return raw


def generated_config(ds: DeepSpeedSpec) -> dict[str, Any]:
    """The DeepSpeed config for a spec block (batch/precision/optimizer hyper-parameters left 'auto')."""
    zero: dict[str, Any] = {
        "stage": ds.stage, "overlap_comm": ds.overlap_comm, "contiguous_gradients": ds.contiguous_gradients,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.stage in (1, 2):
        zero.update(allgather_partitions=True, allgather_bucket_size=ds.allgather_bucket_size, reduce_scatter=True)
    if ds.stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=ds.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=ds.stage3_param_persistence_threshold,
            stage3_max_live_parameters=ds.stage3_max_live_parameters,
            stage3_max_reuse_distance=ds.stage3_max_live_parameters,
            stage3_gather_16bit_weights_on_model_save=ds.gather_16bit_weights_on_save,
        )
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer, "pin_memory": ds.pin_memory}
    if ds.offload_params != "none":
        zero["offload_param"] = {"device": ds.offload_params, "pin_memory": ds.pin_memory}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": zero, "steps_per_print": 10**9, "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer != "none":
        # an offloaded optimizer must be DeepSpeed's CPU Adam; the Trainer's own torch AdamW would be refused
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                        "weight_decay": "auto"}}
    return cfg


def effective_config(ds: DeepSpeedSpec) -> dict[str, Any]:
    """The generated config with `config_file` (if any) merged over it, key by key (the file wins)."""
    cfg = generated_config(ds)
    if ds.config_file:
        cfg = _merge(cfg, read_config_file(ds.config_file))
    return cfg


def config_problems(cfg: dict[str, Any], quant: QuantSpec) -> list[str]:
    """Why a DeepSpeed config cannot train this stage (empty when it can); field paths name the config keys."""
    problems: list[str] = []
    zero = cfg.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        return ["zero_optimization: expected an object"]
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"zero_optimization.stage: expected 0, 1, 2 or 3, got {stage!r}")
        return problems

    def device(key: str) -> str:
        block = zero.get(key) or {}
        return str(block.get("device", "none")) if isinstance(block, dict) else "none"

    if device("offload_optimizer") != "none":
        if stage == 0:
            problems.append("zero_optimization.offload_optimizer: needs ZeRO stage 1, 2 or 3")
        if "optimizer" not in cfg and cfg.get("zero_force_ds_cpu_optimizer", True):
            problems.append("zero_optimization.offload_optimizer: an offloaded optimizer needs DeepSpeed's CPU "
                            "optimizer: add an 'optimizer' block (e.g. {\"type\": \"AdamW\"}) or remove the offload")
    if device("offload_param") != "none" and stage != 3:
        problems.append(f"zero_optimization.offload_param: needs ZeRO stage 3 (got stage {stage})")
    if device("offload_param") != "none" and quant.bits != "none":
        problems.append("zero_optimization.offload_param: bitsandbytes-quantized weights cannot be offloaded")
    if stage == 3 and quant.bits == 8:
        problems.append("zero_optimization.stage 3 with quant.bits 8: ZeRO-3 cannot partition bitsandbytes 8-bit "
                        "weights; use quant.bits 4 or ZeRO-2")
    if stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is False:
        problems.append("zero_optimization.stage3_gather_16bit_weights_on_model_save: must be true, or the saved "
                        "adapter holds empty (partitioned) tensors")
    return problems


def stage_config_problems(stage: Any) -> list[str]:
    """Problems of a training stage's effective DeepSpeed config (its file unreadable included)."""
    ds = getattr(stage, "deepspeed", None)
    if ds is None:
        return []
    try:
        cfg = effective_config(ds)
    except ValueError as exc:
        return [f"deepspeed.config_file: {exc}"]
    where = f"deepspeed.config_file {ds.config_file}" if ds.config_file else "deepspeed"
    return [f"{where}: {p}" for p in config_problems(cfg, stage.quant)]


def runtime_config(ds: DeepSpeedSpec, *, hidden_size: int | None, cuda: bool) -> dict[str, Any]:
    """The config handed to the Trainer: 'auto' bucket sizes resolved from the LLM's hidden size; no pinned
    memory without CUDA (pinning needs a CUDA host allocator)."""
    cfg = effective_config(ds)
    zero = cfg.setdefault("zero_optimization", {})
    if hidden_size:
        h = int(hidden_size)
        sizes = {"reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h),
                 "stage3_param_persistence_threshold": 10 * h}
        for key, value in sizes.items():
            if zero.get(key) == "auto":
                zero[key] = value
    if not cuda:
        for key in ("offload_optimizer", "offload_param"):
            if isinstance(zero.get(key), dict):
                zero[key]["pin_memory"] = False
    return cfg
