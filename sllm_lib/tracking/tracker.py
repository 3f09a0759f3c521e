"""The one place stages talk to experiment tracking.

The launcher owns the runs (pipeline parent run, one child run per stage, see `launch/pipeline.py`);
a stage receives its run id and writes through a `Tracker`. Only rank 0 writes. Tracking errors are
warnings unless `tracking.strict` is set (Ray's `raise_on_error` idea).
"""

from __future__ import annotations

import json
import logging
import time
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
    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None, alias: str | None) -> dict[str, Any]: ...


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

    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None, alias: str | None) -> dict[str, Any]:
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

    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None, alias: str | None) -> dict[str, Any]:
        info = {"local_dir": str(local_dir), "name": name, "registered_name": registered_name, "alias": alias}
        self.models.append(info)
        return info


class MlflowTracker:
    """Writes to one existing MLflow run through MlflowClient (never starts a run of its own)."""

    def __init__(self, tracking_uri: str, run_id: str, *, strict: bool = False) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.strict = strict

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any tracking failure: warn, or re-raise when strict
            if self.strict:
                raise
            log.warning("tracking: %s failed for run %s (%s); training goes on", what, self.run_id, exc)
            return None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k[:250], v[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._guard("log_params", self.client.log_batch, self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(local_path)
        fn = self.client.log_artifacts if p.is_dir() else self.client.log_artifact
        self._guard("log_artifact", fn, self.run_id, str(p), artifact_path)

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(name=d.name, digest=d.digest[:36], source_type="local",
                        source=json.dumps({"uri": d.source}), profile=json.dumps({"num_rows": d.num_rows})),
                tags=[InputTag("mlflow.data.context", d.context)],
            )
            for d in datasets
        ]
        self._guard("log_inputs", self.client.log_inputs, self.run_id, datasets=inputs)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._guard("set_tags", self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def set_status(self, status: str) -> None:
        """RUNNING, or a terminal status (FINISHED, FAILED, KILLED) that also sets the end time."""
        if status == "RUNNING":
            self._guard("update_run", self.client.update_run, self.run_id, status="RUNNING")
        else:
            self._guard("set_terminated", self.client.set_terminated, self.run_id, status=status)

    def log_model(self, local_dir: str | Path, *, name: str, registered_name: str | None, alias: str | None) -> dict[str, Any]:
        """Log a model folder as an MLflow LoggedModel of this run; register a version and set the alias.

        Registration is not guarded: a merge stage that cannot register has failed.
        """
        from mlflow.entities import LoggedModelInput

        run = self.client.get_run(self.run_id)
        model = self.client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=self.run_id,
            tags={TAG_SPEC_HASH: run.data.tags.get(TAG_SPEC_HASH, "")},
        )
        try:
            self.client.log_model_artifacts(model.model_id, str(local_dir))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self._guard("log_inputs(model)", self.client.log_inputs, self.run_id,
                    models=[LoggedModelInput(model.model_id)])
        info: dict[str, Any] = {"model_id": model.model_id, "model_uri": f"models:/{model.model_id}"}
        if registered_name:
            import mlflow
            from mlflow.exceptions import MlflowException

            # MLflow's sqlalchemy registry resolves `models:/<id>` through a *global* MlflowClient()
            # (see its own TODO in sqlalchemy_store.create_model_version), so point the global URI here too.
            mlflow.set_tracking_uri(self.tracking_uri)

            try:
                self.client.create_registered_model(registered_name)
            except MlflowException as exc:
                if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                    raise
            mv = self.client.create_model_version(
                registered_name, source=f"models:/{model.model_id}", run_id=self.run_id, model_id=model.model_id,
                tags={TAG_SPEC_HASH: run.data.tags.get(TAG_SPEC_HASH, "")},
            )
            info.update(registered_name=registered_name, version=mv.version)
            if alias:
                self.client.set_registered_model_alias(registered_name, alias, mv.version)
                info["alias"] = alias
        return info


def default_tracking_uri(output_dir: Path) -> str:
    """The embedded default: a sqlite file in the output dir."""
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
