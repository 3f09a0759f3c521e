"""The nightly evaluation: registry candidate vs champion on a fixed suite, gated, reported, promoted.

One `nightly_eval` stage does, for its date:

1. picks versions from the registry: the candidate alias (required), the champion alias (the
   baseline; absent on the first night), and optionally the N newest other versions;
2. scores each on the suite, or reuses an earlier eval run of the same version and suite content
   (`reuse_evals`; a re-run the same night never scores or logs twice; a finished `sllm eval` of the same
   registered version on the same suite digest, in any experiment of the store, is reused unless `never`);
3. gates every metric that has a threshold: candidate against the champion, and against the
   previous nightly's candidate, with a paired test over sample-level scores, and decides GO / NO-GO /
   INCONCLUSIVE under the stage's gate policy (eval/gates.py);
4. writes report.html / summary.md / result.json (stage output and MLflow artifacts), logs the
   candidate's metrics on the stage run (the trend plots read these back over past nights);
5. with `promote`, moves the champion alias to the candidate on GO (and, with no champion yet, makes the
   candidate the first one unless the policy says `promote_first: false`).

The stage's result carries `nightly/regression` (1.0 on NO-GO) and `nightly/inconclusive`; `sllm submit` /
`sllm nightly` exit 3 on NO-GO and 4 on INCONCLUSIVE.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from eval.eval_runs import (
    TAG_NIGHTLY_DATE,
    eval_tags,
    find_eval,
    find_version_eval,
    load_eval,
    log_eval,
    quote,
    score_keys,
)
from eval.gates import COMPARED, decide, describe_policy, gate, gate_rules
from eval.results import VERDICT_LABELS, GateResult, ModelEval, NightlyResult, TrendPoint, WorstSample
from eval.suites import Suite, load_suite
from sllm_lib.errors import ArtifactNotFoundError, SllmError
from sllm_lib.spec import GatePolicySpec
from sllm_lib.stage import StageContext, StageResult, new_output_tmp, publish_output

log = logging.getLogger(__name__)

TAG_NIGHTLY_SUITE = "sllm.nightly.suite"
TAG_NIGHTLY_MODEL = "sllm.nightly.model"
TAG_NIGHTLY_VERDICT = "sllm.nightly.verdict"
TAG_NIGHTLY_CANDIDATE = "sllm.nightly.candidate_version"
TAG_NIGHTLY_CHAMPION = "sllm.nightly.champion_version"
CANDIDATE_PREFIX = "candidate/"
REPORT_FILES = ("report.html", "summary.md", "result.json")


def today() -> str:
    """The nightly date: today in UTC (a job that starts after midnight belongs to the new date)."""
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


# ------------------------------------------------------------------------------------------ selection


def select_versions(client: Any, stage: Any) -> list[tuple[str, Any]]:
    """(role, ModelVersion) for the candidate, the champion and the N latest other versions.

    Raises:
        ArtifactNotFoundError: the registered model or its candidate alias does not exist.
    """
    from mlflow.exceptions import MlflowException

    name = stage.registered_model
    try:
        cand = client.get_model_version_by_alias(name, stage.candidate_alias)
    except MlflowException as exc:
        raise ArtifactNotFoundError(
            f"nightly: {name}@{stage.candidate_alias} not found in the registry ({exc.message}); register a model "
            f"with that alias (a merge stage's register_as) first") from exc
    picked: list[tuple[str, Any]] = [("candidate", cand)]
    try:
        champ = client.get_model_version_by_alias(name, stage.champion_alias)
        if champ.version != cand.version:
            picked.append(("champion", champ))
    except MlflowException:
        log.warning("nightly: %s has no @%s yet; nothing to gate against (first night?)", name, stage.champion_alias)
    if stage.latest_versions:
        seen = {mv.version for _, mv in picked}
        versions = sorted(client.search_model_versions(f"name = {quote(name)}"), key=lambda mv: int(mv.version),
                          reverse=True)
        picked += [("latest", mv) for mv in versions if mv.version not in seen][: stage.latest_versions]
    return picked


def alias_versions(client: Any, stage: Any) -> dict[str, str | None]:
    """The versions the candidate and champion aliases point at now (None when unset)."""
    from mlflow.exceptions import MlflowException

    out: dict[str, str | None] = {}
    for role, alias in (("candidate", stage.candidate_alias), ("champion", stage.champion_alias)):
        try:
            out[role] = str(client.get_model_version_by_alias(stage.registered_model, alias).version)
        except MlflowException:
            out[role] = None
    return out


def champion_is_candidate(client: Any, stage: Any) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        a = client.get_model_version_by_alias(stage.registered_model, stage.candidate_alias)
        b = client.get_model_version_by_alias(stage.registered_model, stage.champion_alias)
    except MlflowException:
        return False
    return a.version == b.version


# ------------------------------------------------------------------------------------------ scoring


def _when(ms: int | None) -> str:
    """An MLflow timestamp (ms) as 'YYYY-MM-DD HH:MM UTC'."""
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def evaluate_version(client: Any, ctx: StageContext, stage: Any, suite: Suite, digest: str, role: str, mv: Any,
                     *, date: str, experiment_id: str) -> ModelEval:
    """Reuse an earlier eval run of this version on this suite content, or score it now and log a run."""
    from eval.scoring import score_suite
    from sllm_lib.models.refs import ResolvedModel, download_logged_model, load_model, version_model_id
    from eval.suite_stage import link_lineage
    from sllm_lib.tracking.tracker import TAG_PARENT, TAG_STAGE, TAG_STAGE_KIND

    aliases = list(mv.aliases or [])
    if stage.reuse_evals != "never":
        prev = find_eval(client, [experiment_id], digest=digest, model_id=version_model_id(mv), model_path="",
                         date=date if stage.reuse_evals == "same_date" else None, sample_limit=None)
        if prev is not None:
            log.info("nightly: %s v%s (%s): reusing eval run %s", stage.registered_model, mv.version, role,
                     prev.info.run_id)
        else:  # scored by `sllm eval` (any experiment of the store): same version, same suite content, finished
            prev = find_version_eval(client, digest=digest, name=stage.registered_model, version=str(mv.version),
                                     model_id=version_model_id(mv), sample_limit=None,
                                     nightly_runs=stage.reuse_evals == "always")
            if prev is not None:
                log.info("nightly: %s v%s (%s): reusing `sllm eval` run %s (same version, suite digest %s, "
                         "finished %s); not scoring again", stage.registered_model, mv.version, role,
                         prev.info.run_id, digest[:12], _when(prev.info.end_time))
        if prev is not None:
            return load_eval(client, prev, role=role, name=stage.registered_model, version=str(mv.version),
                             aliases=aliases, source_run_id=mv.run_id, keys=score_keys(suite))
    if not version_model_id(mv):
        raise ArtifactNotFoundError(f"{stage.registered_model} v{mv.version}: no logged model to load")
    resolved = ResolvedModel(path=download_logged_model(version_model_id(mv), ctx.tracking_uri or ""),
                             ref=f"models:/{stage.registered_model}/{mv.version}", name=stage.registered_model,
                             version=str(mv.version), model_id=version_model_id(mv), source_run_id=mv.run_id, aliases=aliases)
    log.info("nightly: scoring %s (%s) on %s", resolved.label, role, suite.name)
    model, tokenizer, features = load_model(resolved.path)
    metrics, samples, sps = score_suite(model, tokenizer, features, suite)
    del model
    run = client.create_run(experiment_id, run_name=f"eval-{suite.name}-v{mv.version}-{date}",
                            tags={TAG_PARENT: ctx.run_id or "", TAG_STAGE: f"{stage.name}/v{mv.version}",
                                  TAG_STAGE_KIND: "suite_eval"})
    run_id = run.info.run_id
    try:
        log_eval(client, run_id, tags=eval_tags(resolved, suite, digest, date=date, sample_limit=None),
                 metrics=metrics, samples=samples, samples_per_s=sps, model_id=version_model_id(mv))
        link_lineage(client, run_id, mv.run_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return ModelEval(role=role, name=stage.registered_model, version=str(mv.version), aliases=aliases,
                     eval_run_id=run_id, source_run_id=mv.run_id, metrics=metrics, samples=samples,
                     samples_per_s=sps)


# ------------------------------------------------------------------------------------------ gates


def worst_samples(cand: ModelEval, base: ModelEval | None, gates: list[GateResult], k: int) -> list[WorstSample]:
    """The k samples where the candidate lost most to the champion, on the metrics that regressed
    (or, with no regression, on every gated metric)."""
    from sllm_lib.metrics.registry import is_higher_better

    if base is None or k == 0:
        return []
    vs_champ = [g for g in gates if g.baseline == "champion" and g.status != "no_baseline"]
    chosen = [g for g in vs_champ if g.status == "regression"] or vs_champ
    out: list[WorstSample] = []
    for g in chosen:
        hib = is_higher_better(g.metric)
        base_by_id = {s.id: s for s in base.samples.get(g.task, [])}
        for c in cand.samples.get(g.task, []):
            b = base_by_id.get(c.id)
            if b is None or g.metric not in c.scores or g.metric not in b.scores:
                continue
            loss = (b.scores[g.metric] - c.scores[g.metric]) if hib else (c.scores[g.metric] - b.scores[g.metric])
            if loss > 0:
                out.append(WorstSample(task=g.task, metric=g.metric, id=c.id, reference=c.reference,
                                       candidate_prediction=c.prediction, baseline_prediction=b.prediction,
                                       candidate_score=c.scores[g.metric], baseline_score=b.scores[g.metric],
                                       loss=loss))
    out.sort(key=lambda w: w.loss, reverse=True)
    return out[:k]


# ------------------------------------------------------------------------------------------ history


def past_nightlies(client: Any, experiment_id: str, stage: Any, suite: Suite, *, before: str,
                   limit: int) -> list[Any]:
    """The newest FINISHED nightly run of each earlier date (newest date first)."""
    flt = " and ".join([f"tags.{TAG_NIGHTLY_SUITE} = {quote(suite.name)}",
                        f"tags.{TAG_NIGHTLY_MODEL} = {quote(stage.registered_model)}",
                        "attributes.status = 'FINISHED'"])
    runs = client.search_runs([experiment_id], flt, order_by=["attributes.start_time DESC"], max_results=1000)
    by_date: dict[str, Any] = {}
    for r in runs:
        d = r.data.tags.get(TAG_NIGHTLY_DATE, "")
        if d and d < before and d not in by_date:
            by_date[d] = r
    return [by_date[d] for d in sorted(by_date, reverse=True)[:limit]]


def previous_candidate(client: Any, run: Any) -> ModelEval | None:
    """The previous nightly's candidate (with its samples) from that run's result.json artifact."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run.info.run_id, "nightly/result.json", tmp)
            prev = NightlyResult.from_dict(json.loads(Path(local).read_text(encoding="utf-8")))
    except Exception as exc:  # an old or damaged artifact only costs this one comparison
        log.warning("nightly: previous nightly %s unreadable (%s); not comparing against it", run.info.run_id, exc)
        return None
    m = prev.model("candidate")
    if m is not None:
        m.role = "previous_nightly"
        m.aliases = [f"nightly {prev.date}"]
    return m


def trends(past: list[Any], today_date: str, cand: ModelEval) -> dict[str, list[TrendPoint]]:
    """"task/metric" -> points over past nightlies (oldest first) and today."""
    out: dict[str, list[TrendPoint]] = {k: [] for k in cand.metrics}
    for r in reversed(past):
        version = r.data.tags.get(TAG_NIGHTLY_CANDIDATE, "?")
        for k, v in r.data.metrics.items():
            if k.startswith(CANDIDATE_PREFIX) and k[len(CANDIDATE_PREFIX):] in out:
                out[k[len(CANDIDATE_PREFIX):]].append(TrendPoint(date=r.data.tags[TAG_NIGHTLY_DATE], version=version,
                                                                 value=v))
    for k, v in cand.metrics.items():
        out[k].append(TrendPoint(date=today_date, version=cand.version, value=v))
    return out


# ------------------------------------------------------------------------------------------ the stage


def _lineage_cost(uri: str, m: ModelEval) -> None:
    """What the model cost to train: GPU-hours and cost along the lineage of the run that produced it."""
    from sllm_lib.tracking.lineage import run_usage_total

    if not m.source_run_id:
        return
    try:
        total = run_usage_total(uri, m.source_run_id)
    except Exception as exc:  # the report is still worth having without a cost column
        log.warning("nightly: lineage usage of %s unreadable (%s); no cost shown", m.label, exc)
        return
    if total.runs:
        m.gpu_hours = total.gpu_hours
        m.cost = total.cost_text()


def _experiment_id(client: Any, ctx: StageContext) -> str:
    return client.get_run(ctx.run_id).info.experiment_id


def run_nightly(stage: Any, ctx: StageContext) -> StageResult:
    """Select, score, gate, report and (optionally) promote; see the module docstring."""
    from mlflow import MlflowClient

    if not ctx.tracking_uri or not ctx.run_id:
        raise SllmError(f"stage {stage.name}: nightly_eval needs MLflow tracking (it reads the model registry)")
    date = stage.date or today()
    suite = load_suite(stage.suite)
    digest = suite.digest()
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    exp = _experiment_id(client, ctx)
    picked = select_versions(client, stage)
    log.info("nightly %s: %s", date, ", ".join(f"{role} v{mv.version}" for role, mv in picked))
    models = [evaluate_version(client, ctx, stage, suite, digest, role, mv, date=date, experiment_id=exp)
              for role, mv in picked]
    cand = models[0]
    champ = next((m for m in models if m.role == "champion"), None)
    for m in models:
        _lineage_cost(ctx.tracking_uri, m)
    past = past_nightlies(client, exp, stage, suite, before=date, limit=stage.trend_nights)
    prev = previous_candidate(client, past[0]) if (past and stage.compare_previous) else None
    policy = stage.policy or GatePolicySpec.legacy()
    gates: list[GateResult] = []
    for rule in gate_rules(suite, stage.thresholds, policy):
        gates.append(gate(rule, cand, champ, baseline="champion", bootstrap=stage.bootstrap, policy=policy))
        if prev is not None:
            gates.append(gate(rule, cand, prev, baseline="previous_nightly", bootstrap=stage.bootstrap,
                              policy=policy))
    verdict, reasons = decide(gates, policy)
    notes: list[str] = []
    if champ is None:
        notes.append(f"no @{stage.champion_alias} version" + (
            " other than the candidate" if champion_is_candidate(client, stage) else "") + "; gates have no baseline")
    if not gates:
        notes.append("the suite sets no thresholds: nothing is gated")
    promoted = False
    if stage.promote:
        first = champ is None and not champion_is_candidate(client, stage)
        if champion_is_candidate(client, stage):
            notes.append(f"v{cand.version} is already @{stage.champion_alias}")
        elif verdict == "go" or (first and policy.promote_first and verdict != "no_go"
                                 and not any(g.status in COMPARED for g in gates)):
            client.set_registered_model_alias(stage.registered_model, stage.champion_alias, cand.version)
            promoted = True
            notes.append(f"promoted v{cand.version} to @{stage.champion_alias}" + (
                "" if verdict == "go" else " as the first champion (nothing to gate it against; promote_first)"))
            log.info("nightly: promoted %s v%s to @%s", stage.registered_model, cand.version, stage.champion_alias)
        else:
            notes.append(f"not promoted: the verdict is {VERDICT_LABELS[verdict]}, promotion needs GO")
    result = NightlyResult(date=date, suite=suite.name, registered_model=stage.registered_model,
                           models=models + ([prev] if prev is not None else []), gates=gates,
                           trends=trends(past, date, cand), worst_samples=worst_samples(cand, champ, gates,
                                                                                        stage.worst_samples),
                           regression=verdict == "no_go", promoted=promoted, notes=notes,
                           confidence=stage.bootstrap.confidence, nightly_run_id=ctx.run_id, verdict=verdict,
                           reasons=reasons, policy=describe_policy(policy, written=stage.policy is not None),
                           normalizers=suite.normalizers())
    return _publish(stage, ctx, client, result, cand, champ, digest)


def _publish(stage: Any, ctx: StageContext, client: Any, result: NightlyResult, cand: ModelEval,
             champ: ModelEval | None, digest: str) -> StageResult:
    from eval.report import write_report

    tmp = new_output_tmp(ctx)
    write_report(result, tmp)
    n_reg = sum(g.status == "regression" for g in result.gates)
    metrics = {"nightly/regression": 1.0 if result.regression else 0.0, "nightly/regressed_gates": float(n_reg),
               "nightly/inconclusive": 1.0 if result.verdict == "inconclusive" else 0.0,
               "nightly/gates": float(len(result.gates)), "nightly/promoted": 1.0 if result.promoted else 0.0,
               **{f"{CANDIDATE_PREFIX}{k}": v for k, v in cand.metrics.items()}}
    final = publish_output(tmp, ctx, {"stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash,
                                      "date": result.date, "candidate_version": cand.version,
                                      "champion_version": champ.version if champ else None,
                                      "regression": result.regression, "metrics": metrics,
                                      "suite_digest": digest, "aliases_after": alias_versions(client, stage)})
    if stage.report_dir:
        dest = Path(stage.report_dir) / result.date
        dest.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            tmp_copy = dest / f".{name}.tmp"
            shutil.copyfile(final / name, tmp_copy)
            tmp_copy.replace(dest / name)
    verdict = result.verdict
    ctx.tracker.set_tags({TAG_NIGHTLY_DATE: result.date, TAG_NIGHTLY_SUITE: result.suite,
                          TAG_NIGHTLY_MODEL: result.registered_model, TAG_NIGHTLY_VERDICT: verdict,
                          TAG_NIGHTLY_CANDIDATE: cand.version, TAG_NIGHTLY_CHAMPION: champ.version if champ else ""})
    ctx.tracker.log_metrics(metrics)
    for name in REPORT_FILES:
        ctx.tracker.log_artifact(final / name, "nightly")
    log.info("nightly %s: %s (%s; %d of %d gates regressed) -> %s", result.date, VERDICT_LABELS[verdict],
             "; ".join(result.reasons[:3]) or "-", n_reg, len(result.gates), final / "report.html")
    return StageResult(stage=stage.name, kind=stage.kind, output_dir=str(final), metrics=metrics,
                       extras={"date": result.date, "verdict": verdict, "reasons": result.reasons,
                               "report": str(final / "report.html"),
                               "candidate_version": cand.version,
                               "champion_version": champ.version if champ else None, "promoted": result.promoted})
