"""Score one model on a suite: resolve the model, batched generation, metrics, sample-level scores.

Shared by `sllm eval` (the `suite_eval` stage) and the nightly job. A model is given as a merged
model folder, `models:/NAME@ALIAS`, `models:/NAME/VERSION`, or the MLflow run id of a merge stage;
registry models are downloaded once into `$SLLM_HOME/models/<model id>` (atomic rename).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.results import SampleScore
from eval.suites import Suite, SuiteTask
from sllm_lib.errors import ArtifactNotFoundError

log = logging.getLogger(__name__)

_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ResolvedModel:
    """Where a model's files are and, for registry models, which version it is."""

    path: Path
    ref: str
    name: str | None = None
    version: str | None = None
    model_id: str | None = None
    source_run_id: str | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.name:
            return f"{self.name} v{self.version}" + "".join(f" @{a}" for a in self.aliases)
        return str(self.path)


def version_model_id(mv: Any) -> str | None:
    """The logged-model id of a registry version (older stores leave model_id empty; the source has it)."""
    mid = getattr(mv, "model_id", None)
    if mid:
        return mid
    src = getattr(mv, "source", "") or ""
    return src[len("models:/"):] if src.startswith("models:/") and src.count("/") == 1 else None


def _models_home() -> Path:
    from sllm_lib.models.builders import sllm_home

    return sllm_home() / "models"


def _download_model(model_id: str, tracking_uri: str) -> Path:
    """The logged model's files, downloaded once; a partial download never becomes visible."""
    import mlflow

    final = _models_home() / model_id
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=final.parent))
    try:
        from sllm_lib.tracking.tracker import global_tracking_uri

        with global_tracking_uri(tracking_uri):  # models:/<id> resolves through the global client
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(tmp),
                                                           tracking_uri=tracking_uri))
        src = got if (got / "config.json").is_file() else next((p.parent for p in got.rglob("config.json")), None)
        if src is None:
            raise ArtifactNotFoundError(f"logged model {model_id}: no config.json among its files")
        try:
            os.rename(src, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(ref: str, tracking_uri: str) -> ResolvedModel:
    """Find a model's files from a folder, a registry reference or a merge run id.

    Raises:
        ArtifactNotFoundError: the reference names nothing loadable (the message says what was tried).
    """
    p = Path(ref).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ArtifactNotFoundError(f"{ref}: a folder but not a model (no config.json); point at a merge "
                                        f"stage's output/ folder")
        return ResolvedModel(path=p.resolve(), ref=ref)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    if ref.startswith("models:/") or "@" in ref:
        from sllm_lib.tracking.lineage import parse_model_ref

        name, alias, version = parse_model_ref(ref)
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except MlflowException as exc:
            raise ArtifactNotFoundError(f"{ref}: not in the registry at {tracking_uri} ({exc.message})") from exc
        if not version_model_id(mv):
            raise ArtifactNotFoundError(f"{ref}: version {mv.version} has no logged model to load")
        return ResolvedModel(path=_download_model(version_model_id(mv), tracking_uri), ref=ref, name=name,
                             version=str(mv.version), model_id=version_model_id(mv), source_run_id=mv.run_id,
                             aliases=list(mv.aliases or []))
    if _RUN_ID_RE.match(ref):
        from sllm_lib.tracking.tracker import TAG_OUTPUT

        try:
            run = client.get_run(ref)
        except MlflowException as exc:
            raise ArtifactNotFoundError(f"run {ref}: not found at {tracking_uri} ({exc.message})") from exc
        out = run.data.tags.get(TAG_OUTPUT)
        if not out or not (Path(out) / "config.json").is_file():
            raise ArtifactNotFoundError(f"run {ref}: its output ({out or 'none recorded'}) is not a merged model; "
                                        f"give the run id of a merge stage")
        return ResolvedModel(path=Path(out), ref=ref, source_run_id=ref)
    raise ArtifactNotFoundError(f"model {ref!r}: not a folder, not models:/NAME@ALIAS or models:/NAME/VERSION, "
                                f"and not a run id")


def model_ref_path(ref: str, tracking_uri: str) -> Path:
    """Any model reference as a local folder: a tiny preset (built once), a folder, a registry reference or a merge
    run id (`resolve_model`), else a hub id (downloaded into the hub cache; needs network the first time)."""
    from sllm_lib.models.builders import TINY_PREFIX, materialize_tiny

    if ref.startswith(TINY_PREFIX):
        return materialize_tiny(ref[len(TINY_PREFIX):])
    if Path(ref).expanduser().is_dir() or ref.startswith("models:/") or "@" in ref or _RUN_ID_RE.match(ref):
        return resolve_model(ref, tracking_uri).path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref))
    except Exception as exc:  # offline, gated or unknown: one line naming what was tried
        raise ArtifactNotFoundError(f"model {ref!r}: not a folder, registry reference, run id or tiny preset, and "
                                    f"the hub download failed ({exc})") from exc


def load_model(path: Path) -> tuple[Any, Any, Any]:
    """Model (eval mode), tokenizer and feature extractor from a merged model folder."""
    from sllm_lib.models.builders import folder_model_spec, load_base_model, load_tokenizer_and_features

    from sllm_lib.models.adapters import chain_system_prompt

    spec = folder_model_spec(path)
    model = load_base_model(str(path), model=spec)
    model.eval()
    # a causal LM is prompted with the system prompt it was trained with (kept in the merge's manifest)
    model.sllm_system_prompt = chain_system_prompt([path])
    tokenizer, features = load_tokenizer_and_features(str(path), trust_remote_code=spec.trust_remote_code)
    return model, tokenizer, features


class _Progress:
    """A rich progress bar on a terminal; one status line per interval otherwise (logs, SLURM)."""

    def __init__(self, total: int, label: str, interval_s: float = 10.0) -> None:
        self.total, self.label, self.interval_s = total, label, interval_s
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval_s or self.done >= self.total:
            self.last = now
            log.info("%s: %d/%d samples, %.2f samples/s", self.label, self.done, self.total,
                     self.done / max(now - self.t0, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def score_task(task: SuiteTask, suite: Suite, *, model: Any, tokenizer: Any, features: Any, chat: Any,
               sample_limit: int | None = None) -> tuple[dict[str, float], list[SampleScore], float]:
    """Generate for every sample of one task and score it; (metrics, samples, seconds of generation)."""
    from eval.stage import generate
    from sllm_lib.data.encode import encode_record
    from sllm_lib.data.records import read_records
    from sllm_lib.metrics.registry import compute_metrics

    data = read_records(task.data, task.record_kind, on_bad_record="fail")
    limit = suite.limit_for(task, sample_limit)
    records = data.records[:limit] if limit else data.records
    gen = task.generation_for(suite.generation)
    examples = [encode_record(r, task.record_kind, tokenizer=tokenizer, chat=chat, feature_extractor=features,
                              max_seq_len=10**9, with_target=False) for r in records]
    hyps: list[str] = []
    progress = _Progress(len(examples), f"{suite.name}/{task.name}")
    t0 = time.perf_counter()
    try:
        for i in range(0, len(examples), gen.batch_size):
            batch = examples[i:i + gen.batch_size]
            for ids in generate(model, batch, chat=chat, gen=gen):
                ids = [t for t in ids if t not in (chat.pad, chat.eos)]
                hyps.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
            progress.advance(len(batch))
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    refs = [e.target for e in examples]
    results = compute_metrics(task.metric_names(), refs, hyps, labels=task.labels, options=task.metric_options)
    samples = [SampleScore(id=str(r.get("id") or f"{i:05d}"), reference=ref, prediction=hyp,
                           scores={n: float(res.per_sample[i]) for n, res in results.items()
                                   if len(res.per_sample) == len(refs)})
               for i, (r, ref, hyp) in enumerate(zip(records, refs, hyps))]
    return {n: float(res.score) for n, res in results.items()}, samples, seconds


def score_suite(model: Any, tokenizer: Any, features: Any, suite: Suite, *,
                sample_limit: int | None = None) -> tuple[dict[str, float], dict[str, list[SampleScore]], float]:
    """Every task of the suite: ("task/metric" -> score, task -> samples, samples per second of generation)."""
    from sllm_lib.models.builders import chat_for

    chat = chat_for(tokenizer, model.config, system_prompt=getattr(model, "sllm_system_prompt", None))
    metrics: dict[str, float] = {}
    samples: dict[str, list[SampleScore]] = {}
    n, seconds = 0, 0.0
    for task in suite.tasks:
        scores, task_samples, secs = score_task(task, suite, model=model, tokenizer=tokenizer, features=features,
                                                chat=chat, sample_limit=sample_limit)
        metrics.update({f"{task.name}/{k}": v for k, v in scores.items()})
        samples[task.name] = task_samples
        n += len(task_samples)
        seconds += secs
        log.info("%s/%s: %s", suite.name, task.name, " | ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return metrics, samples, n / seconds if seconds > 0 else 0.0
