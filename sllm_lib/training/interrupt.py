"""Cooperative stop: a signal handler sets a flag; training checkpoints at the next step boundary and stops.

Executors that get a preemption/timeout signal (SLURM's USR2 through submitit) call `request_stop()`
from their handler instead of checkpointing mid-step; the Trainer callback below turns the flag into
a complete checkpoint after the current optimizer step, and the stage raises `StageInterrupted`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sllm_lib.errors import SllmError

log = logging.getLogger(__name__)

_STOP = threading.Event()


class StageInterrupted(SllmError):
    """Training stopped on request after writing a complete checkpoint; re-run (requeue) to resume."""


def request_stop() -> None:
    """Ask the running stage to checkpoint and stop (safe to call from a signal handler)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def stop_callback(world_size: int) -> Any:
    """A TrainerCallback: at each step end, if any rank was asked to stop, save and stop on every rank."""
    from transformers import TrainerCallback

    class StopOnRequest(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            wanted = _STOP.is_set()
            if world_size > 1:  # every rank must stop at the same step, or the next collective hangs
                import torch
                import torch.distributed as dist

                flag = torch.tensor([1 if wanted else 0])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                wanted = bool(flag.item())
            if wanted:
                log.warning("stop requested: checkpointing at step %d and stopping", state.global_step)
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnRequest()
