"""Eval runs in MLflow: log one model's suite scores, find an earlier one to reuse, read it back.

An eval run carries the metrics ("task/metric"), a `samples.jsonl` artifact with every sample's
prediction and per-sample scores, and tags that key it: suite name and content digest, the model's
registry name, version and logged-model id (or folder), the nightly date when a nightly made it, and
`sllm.eval.normalizer.TASK/METRIC` naming the text normaliser behind each CER/WER number.
`sllm.upstream_run_ids` points at the run that produced the model, so the eval run sits in the
model's lineage; the metrics are also logged on the MLflow LoggedModel itself.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from eval.results import ModelEval, SampleScore

log = logging.getLogger(__name__)

TAG_SUITE = "sllm.eval.suite"
TAG_SUITE_DIGEST = "sllm.eval.suite_digest"
TAG_MODEL_NAME = "sllm.eval.model_name"
TAG_MODEL_VERSION = "sllm.eval.model_version"
TAG_MODEL_ID = "sllm.eval.model_id"
TAG_MODEL_PATH = "sllm.eval.model_path"
TAG_NIGHTLY_DATE = "sllm.nightly.date"
TAG_SAMPLE_LIMIT = "sllm.eval.sample_limit"
TAG_NORMALIZER_PREFIX = "sllm.eval.normalizer."  # + "task/metric" -> "korean-v1", "whisper-english-v1"
SAMPLES_ARTIFACT = "samples.jsonl"


def quote(value: str) -> str:
    """A string literal for an MLflow search filter."""
    return "'" + value.replace("'", "\\'") + "'"


def eval_tags(resolved: Any, suite: Any, digest: str, *, date: str | None, sample_limit: int | None) -> dict[str, str]:
    tags = {TAG_SUITE: suite.name, TAG_SUITE_DIGEST: digest, TAG_MODEL_PATH: str(resolved.path),
            TAG_SAMPLE_LIMIT: str(sample_limit or "")}
    if resolved.name:
        tags.update({TAG_MODEL_NAME: resolved.name, TAG_MODEL_VERSION: str(resolved.version),
                     TAG_MODEL_ID: resolved.model_id or ""})
    if date:
        tags[TAG_NIGHTLY_DATE] = date
    tags.update({TAG_NORMALIZER_PREFIX + key: label for key, label in suite.normalizers().items()})
    return tags


def write_samples(path: Path, samples: dict[str, list[SampleScore]]) -> Path:
    """One JSON line per sample: task, id, reference, prediction and the per-sample scores."""
    with open(path, "w", encoding="utf-8") as f:
        for task, rows in samples.items():
            for s in rows:
                f.write(json.dumps({"task": task, "id": s.id, "reference": s.reference, "prediction": s.prediction,
                                    "scores": s.scores}, ensure_ascii=False) + "\n")
    return path


def read_samples(path: Path) -> dict[str, list[SampleScore]]:
    out: dict[str, list[SampleScore]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.setdefault(d["task"], []).append(SampleScore(id=d["id"], reference=d["reference"],
                                                                 prediction=d["prediction"], scores=d["scores"]))
    return out


def log_eval(client: Any, run_id: str, *, tags: dict[str, str], metrics: dict[str, float],
             samples: dict[str, list[SampleScore]], samples_per_s: float, model_id: str | None) -> None:
    """Write one evaluation onto `run_id` (and its metrics onto the logged model)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    all_metrics = {**metrics, "samples_per_s": samples_per_s}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in all_metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    if model_id:
        for k, v in metrics.items():
            try:
                client.log_metric(run_id, f"eval/{tags.get(TAG_SUITE, 'suite')}/{k}", float(v), timestamp=now,
                                  step=0, model_id=model_id)
            except Exception as exc:  # the run keeps the figures; the logged-model link is a convenience
                log.warning("could not attach %s to logged model %s: %s", k, model_id, exc)
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(write_samples(Path(tmp) / SAMPLES_ARTIFACT, samples)), "eval")


def find_eval(client: Any, experiment_ids: list[str], *, digest: str, model_id: str | None, model_path: str,
              date: str | None, sample_limit: int | None) -> Any | None:
    """The newest FINISHED eval run of this model on this suite content (and date, when given)."""
    flt = [f"tags.{TAG_SUITE_DIGEST} = {quote(digest)}", "attributes.status = 'FINISHED'",
           f"tags.{TAG_SAMPLE_LIMIT} = {quote(str(sample_limit or ''))}"]
    flt.append(f"tags.{TAG_MODEL_ID} = {quote(model_id)}" if model_id else f"tags.{TAG_MODEL_PATH} = {quote(model_path)}")
    if date:
        flt.append(f"tags.{TAG_NIGHTLY_DATE} = {quote(date)}")
    runs = client.search_runs(experiment_ids, " and ".join(flt), order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None


def find_version_eval(client: Any, *, digest: str, name: str, version: str, model_id: str | None,
                      sample_limit: int | None, nightly_runs: bool) -> Any | None:
    """The newest FINISHED eval run of registered `name` version `version` (and its logged model, when known) on
    this suite content, in any experiment of the store: what `sllm eval models:/NAME/VERSION --suite S` logs.

    nightly_runs: False leaves out the eval runs a nightly made (they carry a nightly date), so a nightly that
    reuses only its own date's runs still reuses an `sllm eval` of the same version.
    """
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    flt = [f"tags.{TAG_SUITE_DIGEST} = {quote(digest)}", "attributes.status = 'FINISHED'",
           f"tags.{TAG_SAMPLE_LIMIT} = {quote(str(sample_limit or ''))}", f"tags.{TAG_MODEL_NAME} = {quote(name)}",
           f"tags.{TAG_MODEL_VERSION} = {quote(str(version))}"]
    if model_id:
        flt.append(f"tags.{TAG_MODEL_ID} = {quote(model_id)}")
    runs = client.search_runs(experiments, " and ".join(flt), order_by=["attributes.start_time DESC"],
                              max_results=50)
    return next((r for r in runs if nightly_runs or not r.data.tags.get(TAG_NIGHTLY_DATE)), None)


def score_keys(suite: Any) -> set[str]:
    """The "task/metric" keys a suite's eval run scores (its other metrics: copies, counters, throughput)."""
    return {f"{t.name}/{m}" for t in suite.tasks for m in t.metric_names()}


def load_eval(client: Any, run: Any, *, role: str, name: str, version: str, aliases: list[str],
              source_run_id: str | None, keys: set[str] | None = None) -> ModelEval:
    """A ModelEval read back from an earlier eval run (metrics and the samples artifact); with `keys` (see
    `score_keys`) only those metrics, not the eval/SUITE/... copies or cache counters the run also carries."""
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run.info.run_id, f"eval/{SAMPLES_ARTIFACT}", tmp)
        samples = read_samples(Path(local))
    metrics = {k: v for k, v in run.data.metrics.items() if (k in keys if keys is not None else "/" in k)}
    return ModelEval(role=role, name=name, version=version, aliases=aliases, eval_run_id=run.info.run_id,
                     source_run_id=source_run_id, metrics=metrics, samples=samples,
                     samples_per_s=run.data.metrics.get("samples_per_s"), reused=True)
