"""What every stage function receives (`StageContext`) and returns (`StageResult`), and how it publishes its
output folder (built in a temp folder beside it, manifest last, then renamed into place)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sllm_lib.files import MANIFEST, new_temp_folder, publish_folder, write_json_atomic
from sllm_lib.spec import JobSpec
from sllm_lib.tracking.tracker import NullTracker, Tracker


@dataclass
class StageContext:
    """Everything a stage needs: its folder, the job, its tracker, the upstream output chain, rank info."""

    job: JobSpec
    spec_hash: str
    stage_dir: Path
    chain: list[Path] = field(default_factory=list)  # upstream stage outputs, oldest first
    upstream_output: Path | None = None  # the output of `from_stage` (a merged model folder for eval)
    upstream_kind: str | None = None
    tracker: Tracker = field(default_factory=NullTracker)
    rank: int = 0
    world_size: int = 1
    tracking_uri: str | None = None  # for stages that read the registry or create runs (suite_eval, nightly_eval)
    run_id: str | None = None  # this stage's own MLflow run
    # what an executor adds to a training stage's Trainer (Ray Train's report callback and prepare_trainer)
    trainer_callbacks: list[Any] = field(default_factory=list)
    prepare_trainer: Callable[[Any], Any] | None = None

    @property
    def output_dir(self) -> Path:
        return self.stage_dir / "output"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


RESULT_FILE = "result.json"  # beside a stage's output/ folder: stages/<name>/result.json


@dataclass
class StageResult:
    """The small typed result of a stage (also written as result.json)."""

    stage: str
    kind: str
    output_dir: str | None
    steps: int = 0
    loss_first: float | None = None
    loss_last: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StageResult:
        return cls(**json.loads(text))


def new_output_tmp(ctx: StageContext) -> Path:
    """A fresh temp folder beside the final output; publish it with `publish_output`."""
    return new_temp_folder(ctx.output_dir)


def publish_output(tmp: Path, ctx: StageContext, manifest: dict[str, Any]) -> Path:
    """Write the manifest last, then swap the temp folder into place as `output/`."""
    write_json_atomic(tmp / MANIFEST, manifest)
    return publish_folder(tmp, ctx.output_dir)


def upstream_model_ids(chain: list[Path]) -> list[str]:
    """The MLflow LoggedModel ids of the upstream outputs in `chain`, from each stage's result.json (a sweep's
    `output` link resolves to the chosen point's folder, whose result names that point's model)."""
    ids: list[str] = []
    for out in chain:
        try:
            result = json.loads((Path(out).resolve().parent / RESULT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a stage run before models were logged, or tracking off
        model_id = (result.get("extras") or {}).get("model_id")
        if model_id:
            ids.append(str(model_id))
    return ids


def log_stage_model(stage: Any, ctx: StageContext, folder: Path, *, model_type: str,
                    metrics: dict[str, float]) -> dict[str, Any]:
    """A model-producing stage's folder as the MLflow LoggedModel output of its run, built from the upstream
    models, registered (and aliased) when the stage says `register_as`. Returns the ids for result.extras."""
    from sllm_lib.tracking.tracker import logged_model_name

    reg = getattr(stage, "register_as", None)
    return ctx.tracker.log_model(
        folder, name=logged_model_name(ctx.job.name, stage.name), registered_name=reg.name if reg else None,
        alias=reg.alias if reg else None, model_type=model_type, source_model_ids=upstream_model_ids(ctx.chain),
        metrics=metrics, files=ctx.job.tracking.model_files, params=stage.model_dump(mode="json"))
