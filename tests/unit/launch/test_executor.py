"""Every executor has every member of the `Executor` protocol (the pipeline calls them without probing)."""

from __future__ import annotations

import pytest

from launch.executor import Executor, ExecutorBase
from launch.local import LocalExecutor
from launch.ray_executor import RayExecutor
from launch.slurm import SlurmExecutor

MEMBERS = ["name", "supports_dependencies", "supports_arrays", "render", "preflight", "submit", "submit_array", "close"]


def test_the_protocol_lists_what_the_pipeline_calls() -> None:
    declared = set(Executor.__annotations__) | {k for k in vars(Executor) if not k.startswith("_")}
    assert set(MEMBERS) <= declared


@pytest.mark.parametrize("cls", [LocalExecutor, SlurmExecutor, RayExecutor])
def test_each_executor_has_every_member(cls: type) -> None:
    missing = [m for m in MEMBERS if not hasattr(cls, m)]
    assert not missing, f"{cls.__name__} lacks {missing}"
    assert issubclass(cls, ExecutorBase)
    # an executor that says it has job arrays implements them (the base's raises NotImplementedError)
    assert cls.supports_arrays == (cls.submit_array is not ExecutorBase.submit_array)


def test_the_defaults_do_nothing_or_say_why() -> None:
    base = ExecutorBase()
    assert base.preflight(None) is None and base.close() is None  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="no job arrays"):
        base.submit_array([])
