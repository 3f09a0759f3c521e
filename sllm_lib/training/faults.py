"""Fault injection for recovery drills: make one rank of a training stage fail once, mid-stage.

`SLLM_INJECT_FAULT="step=4"` (optionally `,rank=1`, `,stage=NAME`, `,times=N`) raises `InjectedFault` on
that rank right after optimizer step 4, before that step's checkpoint is written, the first N times the
stage gets there (default once: a marker file in the stage folder remembers). An executor with
recovery (Ray Train's `max_failures`, a SLURM requeue) must then resume from the latest checkpoint and
end with the same result as an uninterrupted run. Unset, nothing is added to the Trainer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from sllm_lib.errors import JobSpecError

log = logging.getLogger(__name__)

ENV = "SLLM_INJECT_FAULT"


class InjectedFault(RuntimeError):
    """The failure asked for by SLLM_INJECT_FAULT."""


@dataclass(frozen=True)
class FaultPlan:
    step: int
    rank: int = 0
    stage: str | None = None
    times: int = 1


def parse_fault(text: str) -> FaultPlan:
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in ("step", "rank", "stage", "times"):
            raise JobSpecError(f"{ENV}={text!r}: expected step=N[,rank=R][,stage=NAME][,times=K], got {part!r}")
        fields[key] = value
    if "step" not in fields:
        raise JobSpecError(f"{ENV}={text!r}: step=N is required")
    try:
        return FaultPlan(step=int(fields["step"]), rank=int(fields.get("rank", 0)), stage=fields.get("stage"),
                         times=int(fields.get("times", 1)))
    except ValueError:
        raise JobSpecError(f"{ENV}={text!r}: step, rank and times are integers") from None


def fault_callbacks(ctx: Any) -> list[Any]:
    """The injecting TrainerCallback when SLLM_INJECT_FAULT asks for this stage and rank, else nothing."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return []
    plan = parse_fault(text)
    stage_name = ctx.stage_dir.name
    if plan.rank != ctx.rank or (plan.stage is not None and plan.stage != stage_name):
        return []
    from transformers import TrainerCallback

    marker_dir = ctx.stage_dir / "faults"

    class InjectFault(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if state.global_step != plan.step:
                return control
            marker_dir.mkdir(parents=True, exist_ok=True)
            done = len(list(marker_dir.glob(f"step{plan.step}-rank{plan.rank}-*")))
            if done >= plan.times:
                return control
            (marker_dir / f"step{plan.step}-rank{plan.rank}-{done + 1}").write_text(str(os.getpid()))
            log.warning("stage=%s injected fault at step %d on rank %d (%d of %d)", stage_name, plan.step, plan.rank,
                        done + 1, plan.times)
            raise InjectedFault(f"{ENV}: injected failure at step {plan.step} on rank {plan.rank}")

    return [InjectFault()]
