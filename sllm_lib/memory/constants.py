"""Units and the constants of the memory estimate (see docs/memory_planner.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sllm_lib.audio.features import MEL_FRAMES_PER_POSITION, MEL_FRAMES_PER_SECOND  # noqa: F401 (re-exported)


GB = 1e9
MARGIN_FIXED_BYTES = 1_000_000_000  # CUDA context + cuBLAS/NCCL workspaces
MARGIN_FRACTION = 0.10  # allocator fragmentation and temporaries
BNB_BLOCKSIZE = 64  # bitsandbytes Params4bit default blocksize
BNB_NESTED_BLOCKSIZE = 256  # double quant: quantize_blockwise(absmax, blocksize=256)
LOSS_BYTES_PER_LOGIT = 12
CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"  # sllm_lib/model_configs
LLM_GROUPS = ("llm_embeddings", "llm_layers", "lm_head")
GROUP_LABELS = {"audio_encoder": "audio encoder", "vision_encoder": "vision encoder", "projector": "projector",
                "llm_embeddings": "LLM embeddings", "llm_layers": "LLM layers", "lm_head": "lm_head"}
Device = Literal["gpu", "cpu"]
