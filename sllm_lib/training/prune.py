"""The `prune` stage: magnitude pruning of a merged model's Linear weights, made permanent and verified.

Unstructured: the `sparsity` share of each targeted weight matrix with the smallest |w| is set to zero (exactly
round(sparsity * numel) entries per matrix). N:M (e.g. 2:4, what sparse tensor cores run): in every group of M
consecutive input weights of a row, only the N largest |w| stay. The zeros are written into the weights (no
masks or hooks remain), counted again after saving, and the stage fails if a matrix is less sparse than asked.
A dense checkpoint stores zeros like any value: pruning alone does not shrink the files (see the stage's note).
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from sllm_lib.stage import StageContext, StageResult, log_stage_model, new_output_tmp, publish_output
from sllm_lib.files import read_manifest

log = logging.getLogger(__name__)


def magnitude_keep_mask(weight: Any, *, sparsity: float | None = None, n_m: tuple[int, int] | None = None) -> Any:
    """Boolean mask of the weights kept (True) by magnitude: unstructured `sparsity`, or N:M along the input dim."""
    import torch

    w = weight.detach().abs().float()
    if n_m is not None:
        n, m = n_m
        rows, cols = w.shape
        if cols % m:
            raise ValueError(f"{cols} input features are not a multiple of M={m} for {n}:{m} pruning")
        groups = w.reshape(rows, cols // m, m)
        top = groups.topk(n, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        return keep.reshape(rows, cols)
    assert sparsity is not None
    k = int(round(sparsity * w.numel()))  # entries to zero
    keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if k > 0:
        keep[w.flatten().topk(k, largest=False).indices] = False
    return keep.reshape(w.shape)


def _targets(model: Any, names: list[str]) -> list[tuple[str, Any]]:
    """The Linear modules pruned: LLM Linears whose name ends with one of `names` (as for LoRA targets)."""
    import re

    from torch import nn

    from sllm_lib.models.adapters import lora_target_regex
    from sllm_lib.models.builders import is_speech_model

    rx = re.compile(lora_target_regex(names, speech=is_speech_model(model.config)))
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and rx.fullmatch(n)]


def prune_model(model: Any, *, targets: list[str], sparsity: float | None, n_m: tuple[int, int] | None
                ) -> dict[str, Any]:
    """Zero the smallest weights of every targeted Linear in place; return what was pruned (verified)."""
    import torch

    modules = _targets(model, targets)
    if not modules:
        raise ValueError(f"no Linear layer matches targets {targets} in this model")
    per_module: dict[str, float] = {}
    zeros = total = 0
    with torch.no_grad():
        for name, mod in modules:
            keep = magnitude_keep_mask(mod.weight, sparsity=sparsity, n_m=n_m)
            mod.weight.mul_(keep.to(mod.weight.dtype))
            z = int((mod.weight == 0).sum())
            per_module[name] = z / mod.weight.numel()
            zeros, total = zeros + z, total + mod.weight.numel()
    return {"modules": len(modules), "pruned_params": total, "zeros": zeros, "sparsity": zeros / total,
            "per_module_min": min(per_module.values()), "per_module_max": max(per_module.values())}


def verify_sparsity(model: Any, *, targets: list[str], sparsity: float | None, n_m: tuple[int, int] | None) -> float:
    """Recount the zeros (after a reload): every targeted matrix at least as sparse as asked, every N:M group with
    at most N non-zeros. Returns the sparsity over the targeted weights."""
    zeros = total = 0
    for name, mod in _targets(model, targets):
        w = mod.weight.detach()
        z = int((w == 0).sum())
        if n_m is not None:
            n, m = n_m
            nonzero = (w.reshape(w.shape[0], -1, m) != 0).sum(-1)
            if int(nonzero.max()) > n:
                raise RuntimeError(f"{name}: a group of {m} holds {int(nonzero.max())} non-zeros after {n}:{m} pruning")
        elif z < int(round(sparsity * w.numel())):  # type: ignore[operator]
            raise RuntimeError(f"{name}: {z} of {w.numel()} weights are zero, expected at least "
                               f"{int(round(sparsity * w.numel()))}")  # type: ignore[operator]
        zeros, total = zeros + z, total + w.numel()
    return zeros / total


def run_prune(stage: Any, ctx: StageContext) -> StageResult:
    """Prune the upstream merged (or pruned) model and publish it as a model folder (registered when asked)."""
    from sllm_lib.errors import JobSpecError
    from sllm_lib.models.builders import folder_model_spec, load_base_model, load_tokenizer_and_features

    src = ctx.upstream_output
    if src is None or not (src / "config.json").is_file():
        raise JobSpecError(f"stage {stage.name!r}: prune needs a model folder from its from_stage (a merge or "
                           f"prune stage); {src} has no config.json")
    spec = folder_model_spec(src)
    model = load_base_model(str(src), model=spec, dtype=stage.dtype)
    tokenizer, features = load_tokenizer_and_features(str(src), trust_remote_code=spec.trust_remote_code)
    n_m = stage.n_m()
    stats = prune_model(model, targets=list(stage.targets), sparsity=stage.target_sparsity if n_m is None else None,
                        n_m=n_m)
    log.info("stage=%s pruned %d Linears (%s): %.1f%% of %d weights are zero (per matrix %.1f-%.1f%%)", stage.name,
             stats["modules"], stage.pattern, 100 * stats["sparsity"], stats["pruned_params"],
             100 * stats["per_module_min"], 100 * stats["per_module_max"])
    total = sum(p.numel() for p in model.parameters())
    metrics = {"prune/sparsity": stats["sparsity"], "prune/pruned_params": float(stats["pruned_params"]),
               "prune/model_sparsity": stats["zeros"] / total}
    result = StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.output_dir), metrics=dict(metrics))
    if not ctx.is_main:
        return result
    upstream = read_manifest(src) or {}
    tmp = new_output_tmp(ctx)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if features is not None:
            features.save_pretrained(str(tmp))
        reloaded = load_base_model(str(tmp), model=spec.model_copy(update={"base": str(tmp)}), dtype=stage.dtype)
        measured = verify_sparsity(reloaded, targets=list(stage.targets),
                                   sparsity=stage.target_sparsity if n_m is None else None, n_m=n_m)
        del reloaded
        manifest = {
            "stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash, "source": str(src),
            "base_model": upstream.get("base_model"), "chain": upstream.get("chain", []), "dtype": stage.dtype,
            "num_parameters": total, "pattern": stage.pattern, "target_sparsity": stage.target_sparsity,
            "measured_sparsity": measured, "targets": list(stage.targets), **stats,
            "system_prompt": upstream.get("system_prompt"), "trust_remote_code": spec.trust_remote_code,
        }
        final = publish_output(tmp, ctx, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    metrics["prune/size_mb"] = size / 2**20
    result.metrics.update(metrics)
    ctx.tracker.log_metrics(metrics)
    info = log_stage_model(stage, ctx, final, model_type="pruned", metrics=metrics)
    result.extras.update(info)
    return result
