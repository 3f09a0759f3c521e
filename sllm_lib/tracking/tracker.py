"""The one place stages talk to experiment tracking.

The launcher owns the runs (pipeline parent run, one child run per stage, see `launch/pipeline.py`);
a stage receives its run id and writes through a `Tracker`. Only rank 0 writes. Tracking errors are
warnings unless `tracking.strict` is set (Ray's `raise_on_error` idea).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Tags that make up the lineage graph (written on every stage run).
TAG_SPEC_HASH = "sllm.spec_hash"
TAG_STAGE = "sllm.stage"
TAG_STAGE_KIND = "sllm.stage_kind"
TAG_UPSTREAM_RUNS = "sllm.upstream_run_ids"
TAG_GIT_SHA = "sllm.git_sha"
TAG_JOB = "sllm.job"
TAG_PARENT = "mlflow.parentRunId"
TAG_OUTPUT = "sllm.output_uri"
TAG_SOURCE_MODELS = "sllm.source_model_ids"  # on a LoggedModel: the logged models it was built from
TAG_MODEL_ID = "sllm.model_id"  # on a model version: the LoggedModel it was registered from
TAG_NOTE = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
# What the MLflow UI reads to open an experiment in its model-training view (mlflow 3.x: genai_development,
# custom_model_development, finetuning); without it a new experiment opens in the GenAI (traces) view.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "finetuning"
# MLflow's own link from a LoggedModel to its registered versions (what mlflow.register_model writes; the UI's
# "Model versions" on the logged model page come from it).
TAG_MODEL_VERSIONS = "mlflow.modelVersions"
# Files logged when a stage asks for a pointer instead of its weights (tracking.model_files: pointer).
POINTER_FILE = "sllm_pointer.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset input of a stage: name, content digest, source path, row count, context (train/val/eval)."""

    name: str
    digest: str
    source: str
    num_rows: int
    context: str


class Tracker(Protocol):
    """What a stage may do with its tracking run."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_datasets(self, datasets: list[DatasetRecord]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def set_status(self, status: str) -> None: ...
    def last_step(self, key: str) -> int | None: ...
    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None = None,
                  alias: str | None = None, model_type: str = "model", source_model_ids: Sequence[str] = (),
                  metrics: dict[str, float] | None = None, step: int = 0, files: str = "all",
                  params: dict[str, Any] | None = None) -> dict[str, Any]: ...


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts/lists into dotted keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))  # MLflow keys allow no brackets
    else:
        out[prefix] = json.dumps(data, ensure_ascii=False) if isinstance(data, (list, dict)) else str(data)
    return out


class NullTracker:
    """Discards everything (non-zero ranks, tracking disabled)."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def set_status(self, status: str) -> None:
        pass

    def last_step(self, key: str) -> int | None:
        return None

    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None = None,
                  alias: str | None = None, model_type: str = "model", source_model_ids: Sequence[str] = (),
                  metrics: dict[str, float] | None = None, step: int = 0, files: str = "all",
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {}


@dataclass
class RecordingTracker:
    """List-backed fake for unit tests."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[tuple[str, float, int | None]] = field(default_factory=list)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)
    datasets: list[DatasetRecord] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics += [(k, float(v), step) for k, v in metrics.items()]

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((str(local_path), artifact_path))

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        self.datasets += datasets

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def set_status(self, status: str) -> None:
        self.tags["status"] = status

    def last_step(self, key: str) -> int | None:
        steps = [step for k, _, step in self.metrics if k == key and step is not None]
        return max(steps) if steps else None

    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None = None,
                  alias: str | None = None, model_type: str = "model", source_model_ids: Sequence[str] = (),
                  metrics: dict[str, float] | None = None, step: int = 0, files: str = "all",
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
        info = {"local_dir": str(local_dir), "name": name, "registered_name": registered_name, "alias": alias,
                "model_type": model_type, "source_model_ids": list(source_model_ids), "metrics": dict(metrics or {}),
                "step": step, "files": files, "params": dict(params or {})}
        self.models.append(info)
        return info


class MlflowTracker:
    """Writes to one existing MLflow run through MlflowClient (never starts a run of its own).

    Every call is bounded by `call_timeout_s`; a failed or slow call goes to the journal (see
    `tracking/journal.py`) unless `strict`. Params, tags and text artifacts are redacted first.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, strict: bool = False, journal: Any = None,
                 call_timeout_s: float = 5.0) -> None:
        from mlflow import MlflowClient

        from sllm_lib.tracking.journal import BoundedClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.strict = strict
        self.journal = journal
        self.bounded = BoundedClient(journal, call_timeout_s=call_timeout_s, strict=strict)

    def _batch(self, what: str, *, metrics: list[list[Any]] = (), params: list[list[str]] = (),
               tags: list[list[str]] = ()) -> None:
        from mlflow.entities import Metric, Param, RunTag

        payload = {"metrics": [list(m) for m in metrics], "params": [list(x) for x in params],
                   "tags": [list(t) for t in tags]}

        def send() -> None:
            client_metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in payload["metrics"]]
            client_params = [Param(k, v) for k, v in payload["params"]]
            client_tags = [RunTag(k, v) for k, v in payload["tags"]]
            self.client.log_batch(self.run_id, metrics=client_metrics, params=client_params, tags=client_tags)

        self.bounded.call(what, send, op="log_batch", run_id=self.run_id, payload=payload)

    def log_params(self, params: dict[str, Any]) -> None:
        from sllm_lib.secrets import redact

        flat = redact(flatten(params))
        items = [[k[:250], str(v)[:6000]] for k, v in flat.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._batch("log_params", params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *,
                    timestamp_ms: int | None = None) -> None:
        # fixed now (or the caller's, e.g. the tracking sidecar's): a replay re-sends the same rows, which MLflow
        # dedupes
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self._batch("log_metrics", metrics=[[k, float(v), now, step or 0] for k, v in metrics.items()])

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        p = _redacted_copy(Path(local_path))
        fn = self.client.log_artifacts if p.is_dir() else self.client.log_artifact
        self.bounded.call("log_artifact", lambda: fn(self.run_id, str(p), artifact_path), op="log_artifact",
                          run_id=self.run_id, payload={"local_path": str(p), "artifact_path": artifact_path})

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        payload = {"datasets": [
            {"dataset": dict(name=d.name, digest=d.digest[:36], source_type="local",
                             source=json.dumps({"uri": d.source}), profile=json.dumps({"num_rows": d.num_rows})),
             "tags": [["mlflow.data.context", d.context]]}
            for d in datasets]}

        def send() -> None:
            inputs = [DatasetInput(Dataset(**d["dataset"]), tags=[InputTag(k, v) for k, v in d["tags"]])
                      for d in payload["datasets"]]
            self.client.log_inputs(self.run_id, datasets=inputs)

        self.bounded.call("log_inputs", send, op="log_inputs", run_id=self.run_id, payload=payload)

    def set_tags(self, tags: dict[str, str]) -> None:
        from sllm_lib.secrets import redact

        clean = redact({k: str(v) for k, v in tags.items()})
        self._batch("set_tags", tags=[[k, v] for k, v in clean.items()])

    def set_status(self, status: str, *, timestamp_ms: int | None = None) -> None:
        """RUNNING, or a terminal status (FINISHED, FAILED, KILLED) that also sets the end time."""
        end = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms

        def send() -> None:
            if status == "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                self.client.set_terminated(self.run_id, status=status, end_time=end)

        self.bounded.call(f"set_status({status})", send, op="set_status", run_id=self.run_id,
                          payload={"status": status, "end_time": end})

    def last_step(self, key: str) -> int | None:
        """The highest step of metric `key` this run already has (None: none, or the server did not answer: a
        resumed stage then logs its steps again rather than losing them)."""
        try:
            history = self.client.get_metric_history(self.run_id, key)
        except Exception as exc:  # a read: never journaled; the caller logs everything, as before
            log.warning("tracking: could not read %s's history of run %s (%s); a resumed stage may log some "
                        "steps twice", key, self.run_id, exc)
            return None
        return max((m.step for m in history), default=None)

    def flush(self) -> Any:
        """At stage end: let a call in flight settle, then replay the journal if it has anything."""
        from sllm_lib.tracking.journal import ReplayStats

        self.bounded.settle()
        if self.bounded.journaled:
            log.warning("tracking: %d calls journaled during this stage; longest wait on the server %.1f s "
                        "(bound %.0f s)", self.bounded.journaled, self.bounded.longest_wait_s,
                        self.bounded.call_timeout_s)
        if self.journal is None or not self.journal.entries():
            return ReplayStats()
        stats = replay_bounded(self.journal, self.client, timeout_s=max(30.0, 6 * self.bounded.call_timeout_s))
        if stats.pending:
            log.warning("tracking: %d journaled operations still pending in %s (%s); run `sllm tracking sync %s` "
                        "once the server is back", stats.pending, self.journal.path, stats.error,
                        self.journal.path.parent)
        else:
            log.info("tracking: replayed %d journaled operations from %s", stats.replayed, self.journal.path)
        return stats

    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None = None,
                  alias: str | None = None, model_type: str = "model", source_model_ids: Sequence[str] = (),
                  metrics: dict[str, float] | None = None, step: int = 0, files: str = "all",
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Log a model folder as an MLflow LoggedModel *output* of this run; register a version and set the alias.

        The model carries the stage's tags and configuration (`params`), the models it was built from
        (`source_model_ids`) and `metrics` linked to it; its files go through the run's artifact store (a team server's S3), or only the small
        files and a pointer to the folder with `files="pointer"`. Registration is not guarded: a merge stage
        that cannot register has failed.
        """
        from mlflow.entities import LoggedModelOutput, Metric

        run = self.client.get_run(self.run_id)
        tags = run.data.tags
        model_tags = {TAG_SPEC_HASH: tags.get(TAG_SPEC_HASH, ""), TAG_STAGE: tags.get(TAG_STAGE, ""),
                      TAG_STAGE_KIND: tags.get(TAG_STAGE_KIND, ""), TAG_JOB: tags.get(TAG_JOB, ""),
                      TAG_OUTPUT: str(Path(local_dir).resolve())}
        if source_model_ids:
            model_tags[TAG_SOURCE_MODELS] = ",".join(source_model_ids)
        from sllm_lib.secrets import redact

        flat = {k[:250]: str(v)[:6000] for k, v in redact(flatten(params or {})).items()}
        model = self.client.create_logged_model(run.info.experiment_id, name=name, source_run_id=self.run_id,
                                                tags=model_tags, params=flat or None, model_type=model_type)
        try:
            with model_files(Path(local_dir), files) as folder:
                self.client.log_model_artifacts(model.model_id, str(folder))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=step)])
        self._describe_model(model.model_id, run, model_type, list(source_model_ids))
        if metrics:  # the model page lists the metrics logged against it
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step, model_id=model.model_id)
                                                        for k, v in metrics.items()])
        info: dict[str, Any] = {"model_id": model.model_id, "model_uri": f"models:/{model.model_id}"}
        if registered_name:
            info.update(self._register(model.model_id, registered_name, alias, tags.get(TAG_SPEC_HASH, ""),
                                       description=f"Registered from logged model [{name}]"
                                                   f"({model_link(run.info.experiment_id, model.model_id)}) of run "
                                                   f"[{run.info.run_name}]({run_link(run.info.experiment_id, self.run_id)})."))
        return info

    def _describe_model(self, model_id: str, run: Any, model_type: str, sources: list[str]) -> None:
        """The logged model's description in the UI: what it is, its run, and the models it was built from as
        links (the same ids as its sllm.source_model_ids tag)."""
        exp = run.info.experiment_id
        tags = run.data.tags
        text = (f"{model_type.capitalize()} from sllm stage **{tags.get(TAG_STAGE, '?')}** "
                f"(`{tags.get(TAG_STAGE_KIND, '?')}`) of job **{tags.get(TAG_JOB, '?')}**, run "
                f"[{run.info.run_name}]({run_link(exp, self.run_id)}).")
        if sources:
            names = []
            for mid in sources:
                try:
                    names.append(f"[{self.client.get_logged_model(mid).name}]({model_link(exp, mid)})")
                except Exception:  # a source logged in another store or deleted: the id stays in the tag
                    names.append(f"`{mid}`")
            text += "\n\nBuilt from: " + ", ".join(names) + "."
        self.client.set_logged_model_tags(model_id, {TAG_NOTE: text})

    def _register(self, model_id: str, registered_name: str, alias: str | None, spec_hash: str, *,
                  description: str) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(registered_name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        with global_tracking_uri(self.tracking_uri):  # the registry resolves models:/<id> globally
            mv = self.client.create_model_version(
                registered_name, source=f"models:/{model_id}", run_id=self.run_id, model_id=model_id,
                tags={TAG_SPEC_HASH: spec_hash, TAG_MODEL_ID: model_id}, description=description,
            )
        # mlflow 3.17's SQL registry drops create_model_version's model_id (no column for it, see
        # sqlalchemy_store.create_model_version), so the version is tied to its LoggedModel the way
        # mlflow.register_model does it: the logged model's mlflow.modelVersions tag, plus our own version tag.
        model = self.client.get_logged_model(model_id)
        versions = json.loads(model.tags.get(TAG_MODEL_VERSIONS) or "[]")
        entry = {"name": registered_name, "version": str(mv.version)}
        if entry not in versions:
            self.client.set_logged_model_tags(model_id, {TAG_MODEL_VERSIONS: json.dumps(versions + [entry])})
        info: dict[str, Any] = {"registered_name": registered_name, "version": mv.version}
        if alias:
            self.client.set_registered_model_alias(registered_name, alias, mv.version)
            info["alias"] = alias
        return info


@contextmanager
def model_files(folder: Path, files: str) -> Iterator[Path]:
    """The folder to upload for a logged model: `folder` itself ("all"), or ("pointer") a temp copy of its small
    non-weight files (configs, manifest, tokenizer) plus POINTER_FILE naming where the weights are."""
    if files == "all":
        yield folder
        return
    if files != "pointer":
        raise ValueError(f"tracking.model_files: expected 'all' or 'pointer', got {files!r}")
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sllm-model-pointer-") as tmp:
        out = Path(tmp)
        kept: list[str] = []
        left: list[dict[str, Any]] = []
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f.relative_to(folder)
            size = f.stat().st_size
            if f.suffix in _WEIGHT_SUFFIXES or size > 4 * 2**20:
                left.append({"path": str(rel), "bytes": size})
                continue
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out / rel)
            kept.append(str(rel))
        (out / POINTER_FILE).write_text(json.dumps(
            {"uri": folder.resolve().as_uri(), "path": str(folder.resolve()), "not_uploaded": left,
             "uploaded": kept}, indent=2), encoding="utf-8")
        yield out


def ensure_experiment(client: Any, name: str, *, artifact_location: str | None = None) -> str:
    """The experiment's id, created when missing; tagged as a fine-tuning experiment unless it already says
    what kind it is (a user's own choice stays), so the MLflow UI opens it in its model-training view."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    if TAG_EXPERIMENT_KIND not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return exp.experiment_id


def logged_model_name(*parts: str) -> str:
    """A LoggedModel name from job and stage names (MLflow refuses / : . % and quotes in one)."""
    import re

    return re.sub(r"[/:.%\"']", "-", "-".join(p for p in parts if p))


# The MLflow 3.17 UI picks its GenAI or model-training view from a per-browser switch (localStorage
# "mlflow.workflowType", default genai) or this query parameter, not from the experiment's kind tag; every
# link sllm writes or prints carries it, so a teammate who follows one lands in the training view.
UI_VIEW = "workflowType=machine_learning"


def ui_link(route: str) -> str:
    """A page of the MLflow UI relative to its root (works on any server the store is opened with)."""
    return f"#/{route.lstrip('/')}?{UI_VIEW}"


def run_link(experiment_id: str, run_id: str) -> str:
    return ui_link(f"experiments/{experiment_id}/runs/{run_id}")


def model_link(experiment_id: str, model_id: str) -> str:
    return ui_link(f"experiments/{experiment_id}/models/{model_id}")


def stage_note(*, job: str, stage: str, kind: str, experiment_id: str, pipeline_run_id: str,
               upstream: dict[str, str]) -> str:
    """A stage run's description (markdown): what it is, and its pipeline and upstream stage runs as links.

    Written from the same run ids as the sllm.upstream_run_ids tag, which `sllm lineage` walks."""
    lines = [f"sllm stage **{stage}** (`{kind}`) of job **{job}**, "
             f"pipeline run [{pipeline_run_id[:8]}]({run_link(experiment_id, pipeline_run_id)}).", ""]
    if upstream:
        lines.append("Upstream stages: " + ", ".join(
            f"[{name}]({run_link(experiment_id, rid)})" for name, rid in upstream.items()) + ".")
    else:
        lines.append("First stage of the pipeline (no upstream stage).")
    return "\n".join(lines)


def _redacted_copy(path: Path) -> Path:
    """The file itself, or a masked temp copy when a small text file contains a registered secret."""
    from sllm_lib.secrets import contains_secret, redact_text

    if not path.is_file() or path.stat().st_size > 64 * 1024 * 1024:
        return path
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return path  # binary: weights, audio, images
    if not contains_secret(text):
        return path
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="sllm-redacted-")) / path.name
    out.write_text(redact_text(text), encoding="utf-8")
    return out


def replay_bounded(journal: Any, client: Any, *, timeout_s: float) -> Any:
    """Replay a journal in a helper thread, waiting at most `timeout_s` (a hung server cannot hold us)."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    from sllm_lib.tracking.journal import ReplayStats

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sllm-replay")
    try:
        return pool.submit(journal.replay, client).result(timeout=timeout_s)
    except FutureTimeout:
        return ReplayStats(pending=len(journal.entries()), error=f"no answer in {timeout_s:.0f} s")
    finally:
        pool.shutdown(wait=False)


def configure_http(tracking: Any) -> None:
    """Bound the MLflow client's own HTTP waits (defaults: ~4 min per call against a dead server).

    Set before the first request; a value the user exported wins.
    """
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(tracking.http_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(tracking.http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # an int in mlflow 3.17
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")


# What the user exported, read before anything could change it: mlflow.set_tracking_uri() writes the
# variable too (mlflow/tracking/_tracking_service/utils.py), so a later read would see our own store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "").strip()


def default_tracking_uri(output_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when exported (a team server), else the embedded default: a sqlite file in the output dir."""
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point mlflow's *global* tracking URI at `uri` for the block, then restore it and MLFLOW_TRACKING_URI.

    MLflow's sqlalchemy registry resolves `models:/<id>` through a global MlflowClient() (see its TODO in
    sqlalchemy_store.create_model_version), and set_tracking_uri also exports MLFLOW_TRACKING_URI to the
    environment; left set, later runs in this process (and its children) would follow it.
    """
    import mlflow

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # None resets mlflow's global to its default
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
