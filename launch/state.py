"""The launcher's record of one pipeline run: `RUN_DIR/state.json`, typed.

Written atomically after every change (submission, completion, failure, cancellation), read by a re-run
(completed stages are reused, an interrupted one resumes in its MLflow run), by `sllm status` (which
reconciles detached SLURM runs) and by `sllm cancel`. The file keeps the layout it always had:

    {"stages": {NAME: {"status", "run_id", "job_id", "result", "points"}}, "tracking_uri", "parent_run_id"}

with a sweep's grid points as entries of their own under "points" (each also carrying its "point"). Fields
not set are left out, and keys this version does not know are kept as they were.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sllm_lib.files import write_json_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


@dataclass
class StageEntry:
    """One stage (or one sweep point): what the launcher submitted and how it ended."""

    status: str | None = None  # SUBMITTED | COMPLETED | FAILED | CANCELLED
    run_id: str | None = None  # its MLflow run
    job_id: str | None = None  # the executor's job id (local-PID, ray-PID, a SLURM id)
    result: dict[str, Any] | None = None  # StageResult.to_dict() once COMPLETED
    point: dict[str, Any] | None = None  # a sweep point's overrides
    points: list[StageEntry] | None = None  # a swept stage's grid points
    other: dict[str, Any] = field(default_factory=dict)  # keys of other versions, kept as they were

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageEntry:
        known = {f.name for f in fields(cls)} - {"other", "points"}
        entry = cls(**{k: v for k, v in data.items() if k in known},
                    other={k: v for k, v in data.items() if k not in known | {"points"}})
        if data.get("points") is not None:
            entry.points = [cls.from_dict(p) for p in data["points"]]
        return entry

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.other)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "other" or value is None:
                continue
            out[f.name] = [p.to_dict() for p in value] if f.name == "points" else value
        return out


@dataclass
class PipelineState:
    """Every stage's entry, the tracking store and the pipeline's MLflow run."""

    stages: dict[str, StageEntry] = field(default_factory=dict)
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    other: dict[str, Any] = field(default_factory=dict)

    def entry(self, name: str) -> StageEntry:
        """The stage's entry, created empty on first use."""
        return self.stages.setdefault(name, StageEntry())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineState:
        stages = {name: StageEntry.from_dict(e or {}) for name, e in (data.get("stages") or {}).items()}
        return cls(stages=stages, tracking_uri=data.get("tracking_uri"), parent_run_id=data.get("parent_run_id"),
                   other={k: v for k, v in data.items() if k not in ("stages", "tracking_uri", "parent_run_id")})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stages": {name: e.to_dict() for name, e in self.stages.items()}, **self.other}
        if self.tracking_uri is not None:
            out["tracking_uri"] = self.tracking_uri
        if self.parent_run_id is not None:
            out["parent_run_id"] = self.parent_run_id
        return out

    @classmethod
    def read(cls, path: Path) -> PipelineState:
        """The state in `path` (a state.json); ValueError / OSError when it cannot be read."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def load(cls, run_dir: Path) -> PipelineState:
        """The run folder's state, or a fresh one (when there is none, or it is unreadable: said in a warning)."""
        path = run_dir / STATE_FILE
        if path.is_file():
            try:
                return cls.read(path)
            except (OSError, ValueError, TypeError, AttributeError):
                log.warning("%s is unreadable; starting a fresh pipeline run", path)
        return cls()

    def save(self, path: Path) -> None:
        """Write atomically (never a half-written state.json)."""
        write_json_atomic(path, self.to_dict())
