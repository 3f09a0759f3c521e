"""What a stage used: wall time and GPU-hours per attempt, and what that cost.

The stage process (rank 0) records each start of a stage as an attempt in ``STAGE_DIR/usage/attempt-NNN.json``:
when it started, the GPUs its allocation holds (the executor's: SLURM's own allocation when the job has GPUs, the
local profile's GPUs, Ray's workers x GPUs per worker), and a heartbeat every ``HEARTBEAT_S`` seconds. It ends the
attempt as completed, failed or interrupted (a requeue). An attempt whose process was killed outright (kill -9,
a node lost, `scontrol requeue` after the grace period) keeps its last heartbeat as its end: it is counted, to
within one heartbeat, as interrupted. So a requeued stage's GPU-hours include every attempt, and the GPU-hours of
attempts that did not complete (the time lost to preemption, up to the last checkpoint) are visible beside them.

Attempt files are written atomically (a reader never sees half a file); a stage re-run in the same folder adds
attempts (the folder's history is the stage's). No heavy imports.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sllm_lib.files import write_json_atomic

log = logging.getLogger(__name__)

USAGE_DIR = "usage"
USAGE_FILE = "usage.json"  # the stage's summary, written when it ends
HEARTBEAT_S = float(os.environ.get("SLLM_USAGE_HEARTBEAT_S", "30"))
ENDED = ("completed", "failed", "interrupted")

TAG_USAGE_START = "sllm.usage.start"
TAG_USAGE_END = "sllm.usage.end"
TAG_CURRENCY = "sllm.cost.currency"
TAG_RATE = "sllm.cost.per_gpu_hour"
USAGE_METRICS = ("usage/wall_s", "usage/gpu_hours", "usage/interrupted_gpu_hours", "usage/attempts", "usage/gpus")
COST_METRIC = "cost/amount"


@dataclass
class Attempt:
    """One start of a stage. `end` is None while it runs (its `last_seen` heartbeat bounds it)."""

    index: int
    start: float
    last_seen: float
    gpus: int
    nodes: int = 1
    end: float | None = None
    state: str = "running"  # running | completed | failed | interrupted
    host: str = ""
    slurm_job_id: str | None = None
    restart_count: str | None = None

    @property
    def stopped(self) -> float:
        """When it stopped (or was last seen alive)."""
        return self.end if self.end is not None else self.last_seen

    @property
    def wall_s(self) -> float:
        return max(0.0, self.stopped - self.start)

    @property
    def gpu_hours(self) -> float:
        return self.wall_s * self.gpus / 3600.0

    def effective_state(self, now: float) -> str:
        """`running`, or `interrupted` when its heartbeat stopped (the process was killed without a word)."""
        if self.state == "running" and now - self.last_seen > 3 * HEARTBEAT_S:
            return "interrupted"
        return self.state


@dataclass
class StageUsage:
    """A stage's attempts and their sums; `cost` is None without a price per GPU-hour."""

    attempts: list[Attempt] = field(default_factory=list)
    cost_per_gpu_hour: float | None = None
    currency: str = "USD"

    @property
    def wall_s(self) -> float:
        return sum(a.wall_s for a in self.attempts)

    @property
    def gpu_hours(self) -> float:
        return sum(a.gpu_hours for a in self.attempts)

    def interrupted_gpu_hours(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return sum(a.gpu_hours for a in self.attempts if a.effective_state(now) == "interrupted")

    @property
    def gpus(self) -> int:
        return max((a.gpus for a in self.attempts), default=0)

    @property
    def start(self) -> float | None:
        return min((a.start for a in self.attempts), default=None)

    @property
    def end(self) -> float | None:
        return max((a.stopped for a in self.attempts), default=None)

    @property
    def cost(self) -> float | None:
        return None if self.cost_per_gpu_hour is None else self.gpu_hours * self.cost_per_gpu_hour

    def metrics(self) -> dict[str, float]:
        """What the stage's MLflow run gets."""
        out = {"usage/wall_s": self.wall_s, "usage/gpu_hours": self.gpu_hours,
               "usage/interrupted_gpu_hours": self.interrupted_gpu_hours(), "usage/attempts": float(len(self.attempts)),
               "usage/gpus": float(self.gpus)}
        if self.cost is not None:
            out[COST_METRIC] = self.cost
        return out

    def tags(self) -> dict[str, str]:
        out = {}
        if self.start is not None:
            out[TAG_USAGE_START] = iso(self.start)
            out[TAG_USAGE_END] = iso(self.end or self.start)
        if self.cost_per_gpu_hour is not None:
            out.update({TAG_CURRENCY: self.currency, TAG_RATE: f"{self.cost_per_gpu_hour:g}"})
        return out

    def to_dict(self) -> dict[str, Any]:
        now = time.time()
        return {"attempts": [{**asdict(a), "state": a.effective_state(now), "wall_s": a.wall_s,
                              "gpu_hours": a.gpu_hours} for a in self.attempts],
                "wall_s": self.wall_s, "gpu_hours": self.gpu_hours,
                "interrupted_gpu_hours": self.interrupted_gpu_hours(now), "start": self.start, "end": self.end,
                "cost_per_gpu_hour": self.cost_per_gpu_hour, "currency": self.currency, "cost": self.cost}


def iso(ts: float) -> str:
    """An epoch time as 'YYYY-MM-DDTHH:MM:SSZ' (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def allocated_gpus(requested: int) -> tuple[int, int]:
    """(GPUs, nodes) this stage's allocation holds: SLURM's own figures when the job has GPUs (what it is billed
    for), else what the executor requested for it (the local profile's GPUs, Ray's workers x GPUs)."""
    per_node = os.environ.get("SLURM_GPUS_ON_NODE")
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or "1")
    if per_node and per_node.isdigit() and os.environ.get("SLURM_JOB_ID"):
        return int(per_node) * nodes, nodes
    return requested, nodes


def read_attempts(stage_dir: Path) -> list[Attempt]:
    """The stage folder's attempts, oldest first (unreadable files are skipped with a warning)."""
    folder = Path(stage_dir) / USAGE_DIR
    out = []
    for path in sorted(folder.glob("attempt-*.json")) if folder.is_dir() else []:
        try:
            out.append(Attempt(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("usage: %s unreadable (%s); not counted", path, exc)
    out.sort(key=lambda a: (a.start, a.index))
    for earlier in out[:-1]:  # a later start means this one died without a word (kill -9, requeue, lost node)
        if earlier.end is None:
            earlier.state, earlier.end = "interrupted", earlier.last_seen
    return out


def stage_usage(stage_dir: Path, *, cost_per_gpu_hour: float | None = None, currency: str = "USD") -> StageUsage:
    return StageUsage(read_attempts(stage_dir), cost_per_gpu_hour=cost_per_gpu_hour, currency=currency)


def usage_folders(stage_dir: Path) -> list[Path]:
    """The folders of a stage that record attempts: the stage's own and each sweep point's (`points/N/`). Named,
    not searched: a stage folder also holds checkpoint and output trees that a recursive glob would walk."""
    stage_dir = Path(stage_dir)
    points = sorted(stage_dir.glob("points/*"), key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                                              else 0, p.name))
    return [f for f in [stage_dir, *points] if (f / USAGE_DIR).is_dir()]


def run_usage(run_dir: Path, *, cost_per_gpu_hour: float | None = None, currency: str = "USD") -> StageUsage:
    """Every attempt of every stage (and sweep point) of one run folder, as one usage."""
    attempts = [a for stage in sorted(Path(run_dir).glob("stages/*")) for folder in usage_folders(stage)
                for a in read_attempts(folder)]
    return StageUsage(sorted(attempts, key=lambda a: a.start), cost_per_gpu_hour=cost_per_gpu_hour, currency=currency)


def format_gpu_hours(hours: float) -> str:
    """GPU-hours for a table: '0.031', '12.4', '1,204'."""
    return f"{hours:,.0f}" if hours >= 1000 else f"{hours:.1f}" if hours >= 10 else f"{hours:.3f}"


class AttemptRecorder:
    """Records one attempt of a stage from the process that runs it (rank 0): `start()`, then `finish(state)`.

    A daemon thread refreshes the attempt's heartbeat; `finish` stops it and writes the end. Recording never fails
    the stage: a file that cannot be written costs the accounting, with a warning."""

    def __init__(self, stage_dir: Path, *, gpus: int) -> None:
        self.folder = Path(stage_dir) / USAGE_DIR
        self.requested_gpus = gpus
        self.attempt: Attempt | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        assert self.attempt is not None
        return self.folder / f"attempt-{self.attempt.index:03d}.json"

    def _write(self) -> None:
        with self._lock:
            try:
                write_json_atomic(self.path, asdict(self.attempt))
            except OSError as exc:
                log.warning("usage: attempt file %s not written (%s)", self.path, exc)

    def start(self) -> Attempt:
        now = time.time()
        self.folder.mkdir(parents=True, exist_ok=True)
        index = 1 + max((int(p.stem.split("-")[1]) for p in self.folder.glob("attempt-*.json")
                         if p.stem.split("-")[1].isdigit()), default=0)
        gpus, nodes = allocated_gpus(self.requested_gpus)
        self.attempt = Attempt(index=index, start=now, last_seen=now, gpus=gpus, nodes=nodes,
                               host=socket.gethostname(), slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                               restart_count=os.environ.get("SLURM_RESTART_COUNT"))
        self._write()
        self._thread = threading.Thread(target=self._beat, name="sllm-usage-heartbeat", daemon=True)
        self._thread.start()
        return self.attempt

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.attempt.last_seen = time.time()
            self._write()

    def finish(self, state: str) -> Attempt | None:
        """End the attempt as `state`; called again (a completed stage whose result could not be written), it
        restates the end state and keeps the end time."""
        if self.attempt is None:
            return None
        if self.attempt.end is not None:
            if state != self.attempt.state:
                self.attempt.state = state
                self._write()
            return self.attempt
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        now = time.time()
        self.attempt.end = self.attempt.last_seen = now
        self.attempt.state = state
        self._write()
        return self.attempt
