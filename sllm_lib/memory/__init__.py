"""Memory planner: the predicted per-GPU memory of every training stage, from the model config alone.

`sllm plan SPEC --cluster X --memory` prints `plan_memory`'s tables; `sllm submit` refuses a stage that is
predicted not to fit the profile's `gpu_memory_gb` (unless `--force`). No weights are read: the model is built on
PyTorch's `meta` device from its config and its parameters are walked. What is exact and what is a formula:
docs/memory_planner.md. Modules: `constants`, `config` (where a config comes from), `accounting` (the parameter
walk, bytes per tensor), `estimate` (one stage's rows), `suggestions` (the cheapest change that fits), `render`.
"""

from __future__ import annotations

from sllm_lib.memory.constants import (
    BNB_BLOCKSIZE, BNB_NESTED_BLOCKSIZE, CONFIG_DIR, GB, GROUP_LABELS, LLM_GROUPS,
    LOSS_BYTES_PER_LOGIT, MARGIN_FIXED_BYTES, MARGIN_FRACTION, MEL_FRAMES_PER_POSITION, MEL_FRAMES_PER_SECOND,
    Device
)
from sllm_lib.memory.config import bundled_config_path, load_model_config
from sllm_lib.memory.accounting import (
    DtypeRules, LinearInfo, ModelAccount, ParamInfo, account_model, lora_numel, lora_shapes, quant4_bytes,
    quant8_bytes, weight_bytes_by_group
)
from sllm_lib.memory.estimate import MemoryRow, StageMemory, plan_memory, stage_memory
from sllm_lib.memory.suggestions import Suggestion, stage_variant, suggest
from sllm_lib.memory.render import render_plan, render_stage

__all__ = [
    "BNB_BLOCKSIZE", "BNB_NESTED_BLOCKSIZE", "CONFIG_DIR", "GB", "GROUP_LABELS", "LLM_GROUPS",
    "LOSS_BYTES_PER_LOGIT", "MARGIN_FIXED_BYTES", "MARGIN_FRACTION", "MEL_FRAMES_PER_POSITION", "MEL_FRAMES_PER_SECOND",
    "Device", "bundled_config_path",
    "load_model_config", "DtypeRules", "LinearInfo", "ModelAccount", "ParamInfo", "account_model", "lora_numel",
    "lora_shapes", "quant4_bytes", "quant8_bytes", "weight_bytes_by_group", "MemoryRow", "StageMemory",
    "plan_memory", "stage_memory", "Suggestion", "stage_variant", "suggest", "render_plan", "render_stage"
]
