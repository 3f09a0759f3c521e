"""The merge stage: base + adapter chain -> one 16-bit (or fp32) safetensors model, logged and registered."""

from __future__ import annotations

import logging
import shutil
from typing import Any

from sllm_lib.models.builders import load_base_model, load_tokenizer_and_features, resolve_model_path
from sllm_lib.models.adapters import apply_chain, chain_system_prompt, chain_value
from sllm_lib.spec import MergeStage
from sllm_lib.stage import StageContext, StageResult, log_stage_model, new_output_tmp, publish_output

log = logging.getLogger(__name__)


def run_merge(stage: MergeStage, ctx: StageContext) -> StageResult:
    """Merge every upstream adapter into an unquantized base and publish the model folder.

    The base is loaded unquantized in `stage.dtype` even when training used 4-bit: merging into
    quantized weights would round the LoRA delta away.
    """
    path = resolve_model_path(ctx.job.model)
    tokenizer, features = load_tokenizer_and_features(path, revision=ctx.job.model.revision,
                                                     trust_remote_code=ctx.job.model.trust_remote_code)
    model = load_base_model(path, model=ctx.job.model, quant=None, dtype=stage.dtype)
    model = apply_chain(model, ctx.chain)
    n_params = sum(p.numel() for p in model.parameters())
    result = StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.output_dir),
                         metrics={"num_parameters": float(n_params)})
    if not ctx.is_main:
        return result
    tmp = new_output_tmp(ctx)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if features is not None:  # a text-only causal LM has none
            features.save_pretrained(str(tmp))
        manifest: dict[str, Any] = {
            "stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash, "base_model": ctx.job.model.base,
            "chain": [str(p) for p in ctx.chain], "dtype": stage.dtype, "num_parameters": n_params,
            "system_prompt": chain_system_prompt(ctx.chain), "vision_prompt": chain_value(ctx.chain, "vision_prompt"),
            "trust_remote_code": ctx.job.model.trust_remote_code,  # loading this folder needs the same
        }
        final = publish_output(tmp, ctx, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    result.metrics["size_mb"] = size / 2**20
    metrics = {"merge/num_parameters": float(n_params), "merge/size_mb": size / 2**20}
    ctx.tracker.log_metrics(metrics)
    reg = stage.register_as
    info = log_stage_model(stage, ctx, final, model_type="merged", metrics=metrics)
    result.extras.update(info)
    if reg and info.get("version"):
        log.info("registered %s version %s with alias @%s", reg.name, info["version"], reg.alias)
    return result
