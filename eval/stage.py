"""The eval stage: batched greedy generation on held-out sets, Korean-correct metrics, predictions artifact."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sllm_lib.models.adapters import apply_chain
from sllm_lib.models.builders import (
    chat_for,
    folder_model_spec,
    load_base_model,
    load_tokenizer_and_features,
    resolve_model_path,
)
from sllm_lib.scoring import evaluate_dataset
from sllm_lib.spec import MODEL_FOLDER_KINDS, EvalStage
from sllm_lib.stage import StageContext, StageResult, new_output_tmp, publish_output
from sllm_lib.tracking.tracker import DatasetRecord

log = logging.getLogger(__name__)


def load_eval_model(ctx: StageContext) -> tuple[Any, Any, Any]:
    """Model, tokenizer and feature extractor: a merged folder as is, or base + adapter chain."""
    if ctx.upstream_kind in MODEL_FOLDER_KINDS and ctx.upstream_output is not None:
        path = str(ctx.upstream_output)
        spec = folder_model_spec(path)
        return load_base_model(path, model=spec), *load_tokenizer_and_features(
            path, trust_remote_code=spec.trust_remote_code)
    path = resolve_model_path(ctx.job.model)
    model = apply_chain(load_base_model(path, model=ctx.job.model), ctx.chain)
    return model, *load_tokenizer_and_features(path, revision=ctx.job.model.revision,
                                               trust_remote_code=ctx.job.model.trust_remote_code)


def vision_renderer(trained_on: list[Any]) -> Any:
    """The prompt renderer a VLM was trained with (from the manifests; the default template otherwise)."""
    import functools

    from sllm_lib.models.adapters import chain_value
    from sllm_lib.spec import render_vision_prompt

    saved = chain_value(trained_on, "vision_prompt") or {}
    return functools.partial(render_vision_prompt, **{k: v for k, v in saved.items() if v})


def run_eval(stage: EvalStage, ctx: StageContext) -> StageResult:
    """Score the upstream model on every dataset of the stage; log metrics and a predictions JSONL."""
    t0 = time.perf_counter()
    model, tokenizer, features = load_eval_model(ctx)
    model.eval()
    from sllm_lib.models.adapters import chain_system_prompt

    # prompt as the model was trained: a causal LM's system prompt, a VLM's prompt template travel in the manifests
    trained_on = [ctx.upstream_output] if ctx.upstream_kind in MODEL_FOLDER_KINDS and ctx.upstream_output else ctx.chain
    chat = chat_for(tokenizer, model.config, system_prompt=chain_system_prompt(list(trained_on)), processor=features,
                    render=vision_renderer(list(trained_on)))
    metrics: dict[str, float] = {}
    normalizers: dict[str, str] = {}  # "eval/task/metric" -> the text normaliser behind that CER/WER number
    predictions: list[dict[str, Any]] = []
    lineage: list[DatasetRecord] = []
    from sllm_lib.metrics.registry import DEFAULT_METRICS, metric_normalizer

    for ref in stage.datasets:
        scores, preds, data = evaluate_dataset(ref, model=model, tokenizer=tokenizer, features=features, chat=chat,
                                               gen=stage.generation)
        name = ref.task_name
        metrics.update({f"{name}/{k}": v for k, v in scores.items()})
        for m in ref.metrics or DEFAULT_METRICS[ref.kind]:
            label = metric_normalizer(m, language=ref.language, options=ref.metric_options.get(m))
            if label is not None:
                normalizers[f"eval/{name}/{m}"] = label
        predictions += preds
        lineage.append(DatasetRecord(name=name, digest=data.digest(), source=str(data.path),
                                     num_rows=len(preds), context="eval"))
        log.info("stage=%s %s: %s", stage.name, name, " | ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    metrics["eval_runtime_s"] = time.perf_counter() - t0
    result = StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.output_dir), metrics=metrics)
    if not ctx.is_main:
        return result
    tmp = new_output_tmp(ctx)
    with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    final = publish_output(tmp, ctx, {"stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash,
                                      "metrics": metrics, "model": str(ctx.upstream_output)})
    ctx.tracker.log_datasets(lineage)
    ctx.tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()})
    if normalizers:
        from eval.eval_runs import TAG_NORMALIZER_PREFIX

        ctx.tracker.set_tags({TAG_NORMALIZER_PREFIX + k: v for k, v in normalizers.items()})
    ctx.tracker.log_artifact(final / "predictions.jsonl", "eval")
    return result
