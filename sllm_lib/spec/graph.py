"""The stage graph: upstream checks by stage traits, cycles, topological order, sweep points."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from sllm_lib.errors import JobSpecError
from sllm_lib.spec.job import JobSpec
from sllm_lib.spec.problems import _format_error, _show
from sllm_lib.spec.stages import StageSpec


def graph_problems(spec: JobSpec) -> list[str]:
    """Unknown upstream names, cycles, and stages fed by the wrong kind of upstream."""
    problems: list[str] = []
    index = {s.name: i for i, s in enumerate(spec.stages)}
    for i, s in enumerate(spec.stages):
        for field, names in (("from_stage", [s.from_stage] if s.from_stage else []), ("depends_on", s.depends_on)):
            for n in names:
                if n not in index:
                    close = difflib.get_close_matches(n, list(index), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; stages are: {', '.join(index)}"
                    problems.append(f"stages[{i}].{field}: unknown stage {_show(n)}{hint}")
                elif n == s.name:
                    problems.append(f"stages[{i}].{field}: stage {n!r} depends on itself")
        if s.from_stage in index:
            up = spec.stages[index[s.from_stage]]
            if up.output == "scores":
                problems.append(f"stages[{i}].from_stage: {s.from_stage!r} is an {up.kind} stage and produces no model")
            if s.kind == "suite_eval" and not s.model and up.output != "model_folder":
                problems.append(f"stages[{i}].from_stage: suite_eval scores a merged model; {s.from_stage!r} is "
                                f"{up.kind} (point from_stage at a merge stage, or set model)")
            if s.upstream_kinds is not None and up.kind not in s.upstream_kinds:
                problems.append(f"stages[{i}].from_stage: {s.kind} works on a model folder; {s.from_stage!r} is "
                                f"{up.kind} (point from_stage at a {' or '.join(s.upstream_kinds)} stage)")
            if s.kind == "merge" and up.output == "model_folder":
                problems.append(f"stages[{i}].from_stage: merge combines training stages; {s.from_stage!r} is "
                                f"already a model folder ({up.kind})")
            if s.trains and up.output == "model_folder":
                problems.append(
                    f"stages[{i}].from_stage: training from a merged model is not supported; "
                    f"start from the training stage that {s.from_stage!r} merges"
                )
        if s.kind == "nightly_eval" and s.from_stage:
            problems.append(f"stages[{i}].from_stage: nightly_eval picks its models from the registry; use depends_on")
    needs = [s.name for s in spec.stages if s.needs_base_model]
    if spec.model is None and needs:
        problems.append(f"model: required by stage(s) {', '.join(map(repr, needs))} (e.g. model: {{base: tiny:voxtral}})")
    problems += sweep_problems(spec)
    if not problems:
        cycle = find_cycle(spec)
        if cycle:
            problems.append(f"stages: dependency cycle: {' needs '.join(cycle)}")
    return problems


def sweep_problems(spec: JobSpec) -> list[str]:
    """The swept stage exists and trains; every grid point gives a valid stage."""
    sw = spec.sweep
    if sw is None:
        return []
    names = [s.name for s in spec.stages]
    if sw.stage not in names:
        close = difflib.get_close_matches(sw.stage, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; stages are: {', '.join(names)}"
        return [f"sweep.stage: unknown stage {_show(sw.stage)}{hint}"]
    stage = spec.stage(sw.stage)
    if not stage.trains:
        return [f"sweep.stage: {sw.stage!r} is a {stage.kind} stage; only training stages can be swept"]
    problems = []
    for key in sw.grid:
        for value in sw.grid[key]:
            try:
                stage_with(stage, {key: value})
            except JobSpecError as exc:
                problems.append(f"sweep.grid: {exc}".replace("\n", " "))
                break
    return problems


def stage_with(stage: Any, overrides: dict[str, Any]) -> Any:
    """A copy of `stage` with dotted fields replaced, validated like the file (JobSpecError if invalid)."""
    from pydantic import TypeAdapter

    raw = stage.model_dump(mode="json")
    for key, value in overrides.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise JobSpecError(f"{key}: {part!r} is not a block of stage {stage.name!r}")
            node = node[part]
        if parts[-1] not in node:
            raise JobSpecError(f"{key}: stage {stage.name!r} has no field {parts[-1]!r} there")
        node[parts[-1]] = value
    try:
        return TypeAdapter(StageSpec).validate_python(raw)
    except ValidationError as exc:
        errs = [{**e, "loc": tuple(e["loc"])[1:]} for e in exc.errors()]  # drop the stage-kind tag
        raise JobSpecError("; ".join(_format_error(e, type(stage)) for e in errs)) from exc


def find_cycle(spec: JobSpec) -> list[str] | None:
    """A cycle in the stage graph as a list of names (first == last), or None."""
    edges = {s.name: s.upstream() for s in spec.stages}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for s in spec.stages:  # depth-first, iterative: a chain of thousands of stages must not hit the recursion limit
        if s.name in state:
            continue
        state[s.name] = 1
        path, pending = [s.name], [iter(edges.get(s.name, []))]
        while path:
            for m in pending[-1]:
                if state.get(m) == 1:
                    return path[path.index(m):] + [m]
                if state.get(m) is None:
                    state[m] = 1
                    path.append(m)
                    pending.append(iter(edges.get(m, [])))
                    break
            else:
                state[path.pop()] = 2
                pending.pop()
    return None


def topo_order(spec: JobSpec) -> list[str]:
    """Stage names in an order that respects every dependency (stable w.r.t. file order)."""
    done: list[str] = []
    remaining = [s.name for s in spec.stages]
    edges = {s.name: s.upstream() for s in spec.stages}
    while remaining:
        for n in remaining:
            if all(u in done for u in edges[n]):
                done.append(n)
                remaining.remove(n)
                break
        else:  # pragma: no cover - graph_problems rejects cycles at load
            raise AssertionError(f"cycle among {remaining}")
    return done
