"""The `suite_eval` stage (what `sllm eval MODEL --suite S` submits): one model, one suite, one eval run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from eval.eval_runs import eval_tags, log_eval, write_samples
from eval.scoring import score_suite
from sllm_lib.models.refs import ResolvedModel, load_model, resolve_model
from eval.suites import load_suite
from sllm_lib.errors import ArtifactNotFoundError
from sllm_lib.stage import StageContext, StageResult, new_output_tmp, publish_output

log = logging.getLogger(__name__)


def _resolve(stage: Any, ctx: StageContext) -> ResolvedModel:
    ref = stage.model or (str(ctx.upstream_output) if ctx.upstream_output else None)
    if ref is None:
        raise ArtifactNotFoundError(f"stage {stage.name}: no model to evaluate (set model or from_stage)")
    if ctx.tracking_uri is None and not Path(ref).is_dir():
        raise ArtifactNotFoundError(f"stage {stage.name}: {ref} needs a tracking server to resolve")
    return resolve_model(ref, ctx.tracking_uri or "")


def link_lineage(client: Any, run_id: str, source_run_id: str | None) -> None:
    """Add the model's producing run to this run's upstream runs (the lineage walk follows it)."""
    from sllm_lib.tracking.tracker import TAG_UPSTREAM_RUNS

    if not source_run_id:
        return
    ups = [u for u in client.get_run(run_id).data.tags.get(TAG_UPSTREAM_RUNS, "").split(",") if u]
    if source_run_id not in ups:
        client.set_tag(run_id, TAG_UPSTREAM_RUNS, ",".join([*ups, source_run_id]))


def run_suite_eval(stage: Any, ctx: StageContext) -> StageResult:
    """Resolve the model, score it on the suite, write samples.jsonl and log the eval run."""
    suite = load_suite(stage.suite)
    digest = suite.digest()
    resolved = _resolve(stage, ctx)
    log.info("stage=%s: %s on suite %s (%d tasks)", stage.name, resolved.label, suite.name, len(suite.tasks))
    model, tokenizer, features = load_model(resolved.path)
    metrics, samples, sps = score_suite(model, tokenizer, features, suite, sample_limit=stage.sample_limit)
    result = StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.output_dir),
                         metrics={**metrics, "samples_per_s": sps},
                         extras={"model": resolved.label, "model_path": str(resolved.path), "suite": suite.name,
                                 "suite_digest": digest, "model_id": resolved.model_id})
    if not ctx.is_main:
        return result
    tmp = new_output_tmp(ctx)
    write_samples(tmp / "samples.jsonl", samples)
    (tmp / "metrics.json").write_text(json.dumps(result.metrics, indent=2), encoding="utf-8")
    publish_output(tmp, ctx, {"stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash,
                              "suite_digest": digest, "model_id": resolved.model_id, "model": str(resolved.path),
                              "metrics": result.metrics})
    if ctx.tracking_uri and ctx.run_id:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=ctx.tracking_uri)
        log_eval(client, ctx.run_id, tags=eval_tags(resolved, suite, digest, date=None, sample_limit=stage.sample_limit),
                 metrics=metrics, samples=samples, samples_per_s=sps, model_id=resolved.model_id)
        link_lineage(client, ctx.run_id, resolved.source_run_id)
    return result
