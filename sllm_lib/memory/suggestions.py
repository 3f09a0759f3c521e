"""The cheapest change that makes a stage fit (as `--set` arguments), each candidate validated."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from sllm_lib.errors import JobSpecError
from sllm_lib.memory.accounting import account_model
from sllm_lib.memory.constants import Device
from sllm_lib.memory.estimate import StageMemory, _gb, stage_memory
from sllm_lib.spec import JobSpec


# Rough relative slowdown of each change (the search minimises the sum; ties go to fewer changes):
# ZeRO-2 costs about what DDP's all-reduce does, ZeRO-3 adds a weight all-gather per forward and backward,
# checkpointing a second forward, each halving of the micro-batch some GPU efficiency, offloading PCIe
# traffic and CPU Adam, and 4-bit weights change the model (last resort).
_ZERO_COST = {None: 0.0, 0: 0.0, 1: 0.03, 2: 0.05, 3: 0.25}
_COST_CHECKPOINTING = 0.33
_COST_PER_HALVING = 0.10
_COST_OFFLOAD_OPTIMIZER = 0.5
_COST_OFFLOAD_PARAMS = 1.0
_COST_QUANT4 = 1.5


@dataclass(frozen=True)
class Suggestion:
    """The cheapest set of spec changes predicted to make a stage fit."""

    stage: str
    index: int
    changes: dict[str, Any]  # dotted stage field -> value
    memory: StageMemory

    @property
    def set_args(self) -> list[str]:
        """The changes as `--set` values for `sllm plan|submit`."""
        return [f"stages[{self.index}].{k}={_yaml_scalar(v)}" for k, v in self.changes.items()]

    def describe(self) -> str:
        """One line: the --set options and the predicted memory with them."""
        sets = " ".join(f"--set {a}" for a in self.set_args)
        avail = self.memory.available_bytes or 0
        return f"{sets}  (predicted {_gb(self.memory.total)} of {_gb(avail)})"


def _yaml_scalar(v: Any) -> str:
    return "true" if v is True else "false" if v is False else str(v)


@functools.lru_cache(maxsize=1)
def _stage_adapter() -> Any:
    from pydantic import TypeAdapter

    from sllm_lib.spec import StageSpec

    return TypeAdapter(StageSpec)


def stage_variant(stage: Any, changes: dict[str, Any]) -> Any:
    """A validated copy of `stage` with dotted fields set (blocks such as `deepspeed` created when absent).

    Raises:
        JobSpecError: the combination is not a valid stage.
    """
    from pydantic import ValidationError

    raw = stage.model_dump(mode="json")
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    try:
        variant = _stage_adapter().validate_python(raw)
    except ValidationError as exc:
        raise JobSpecError(f"stage {stage.name!r} with {changes}: {exc.errors()[0]['msg']}") from exc
    from sllm_lib.deepspeed_config import stage_config_problems

    problems = stage_config_problems(variant)  # what load_job_spec checks too (a config_file's settings)
    if problems:
        raise JobSpecError(f"stage {stage.name!r} with {changes}: {problems[0]}")
    return variant


def _candidates(stage: Any) -> list[tuple[float, dict[str, Any]]]:
    """Every combination of the knobs, with its cost, cheapest first."""
    import itertools

    t, ds, q = stage.train, stage.deepspeed, stage.quant
    cur = ds.stage if ds is not None else None
    zero = [({}, 0.0)] + [({"deepspeed.stage": z}, _ZERO_COST[z] - _ZERO_COST[cur])
                          for z in (2, 3) if cur is None or z > cur]
    ckpt = [({}, 0.0)] + ([] if t.gradient_checkpointing else [({"train.gradient_checkpointing": True},
                                                                  _COST_CHECKPOINTING)])
    mb = [({}, 0.0)] + [({"train.per_device_bsz": m, "train.grad_accum": t.grad_accum * t.per_device_bsz // m},
                         _COST_PER_HALVING * math.log2(t.per_device_bsz / m))
                        for m in range(t.per_device_bsz - 1, 0, -1) if t.per_device_bsz % m == 0]
    off_o = [({}, 0.0)] + ([] if ds is not None and ds.offload_optimizer == "cpu"
                           else [({"deepspeed.offload_optimizer": "cpu"}, _COST_OFFLOAD_OPTIMIZER)])
    off_p = [({}, 0.0)] + ([] if ds is not None and ds.offload_params == "cpu"
                           else [({"deepspeed.offload_params": "cpu"}, _COST_OFFLOAD_PARAMS)])
    quant = [({}, 0.0)] + ([] if q.bits == 4 else [({"quant.bits": 4}, _COST_QUANT4)])
    out = []
    for combo in itertools.product(zero, ckpt, mb, off_o, off_p, quant):
        changes = {k: v for part, _ in combo for k, v in part.items()}
        if not changes or (ds is None and any(k.startswith("deepspeed.") for k in changes)
                           and "deepspeed.stage" not in changes):
            continue  # a new deepspeed block always names its ZeRO stage
        out.append((sum(c for _, c in combo), changes))
    out.sort(key=lambda cc: (cc[0], len(cc[1])))
    return out


def suggest(job: JobSpec, profile: Any, memory: StageMemory, *, device: Device | None = None) -> Suggestion | None:
    """The cheapest change to a stage that is predicted to fit `profile.gpu_memory_gb`.

    Tries combinations of: ZeRO-2/3, gradient checkpointing, a smaller micro-batch with grad_accum raised to keep
    the global batch, optimizer / parameter offload to the CPU, and 4-bit weights; ordered by a rough cost.

    Returns:
        None when the stage already fits, the profile gives no GPU memory, or nothing fits.
    """
    if memory.fits is not False or job.model is None:
        return None
    stage = job.stages[memory.index]
    account = account_model(job.model)
    dev: Device = device or memory.device
    for _, changes in _candidates(stage):
        try:
            variant = stage_variant(stage, changes)
        except JobSpecError:
            continue
        m = stage_memory(variant, memory.index, account, profile, device=dev)
        if m.fits:
            return Suggestion(stage=stage.name, index=memory.index, changes=changes, memory=m)
    return None
