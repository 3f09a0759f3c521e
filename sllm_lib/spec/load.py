"""Loading: a spec file or profile to validated, frozen objects (paths made absolute, overrides applied,
every problem reported at once); the canonical form, hash and JSON schema of a spec."""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sllm_lib.deepspeed_config import stage_config_problems
from sllm_lib.errors import JobSpecError
from sllm_lib.spec.graph import graph_problems
from sllm_lib.spec.job import JobSpec
from sllm_lib.spec.overrides import apply_overrides
from sllm_lib.spec.problems import (_PROFILE_ROOT, _clip, _format_error, _printable, _show, raise_problems,
                                   validation_problems)
from sllm_lib.spec.profiles import LocalProfile, RayProfile, SlurmProfile, _profile_adapter
from sllm_lib.spec.yaml_io import _expanduser, _is_file, read_yaml


def _absolute(value: str, base_dir: Path) -> str:
    if "\0" in value:
        raise ValueError("contains a NUL character")
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _resolve_data_paths(raw: dict[str, Any], base_dir: Path) -> list[str]:
    """Make dataset, suite, report and model paths absolute against the spec's folder (in place, before validation).

    Returns one problem line per path that cannot be resolved (`~nosuchuser/x`, an embedded NUL); values of the
    wrong type are left to validation.
    """
    problems: list[str] = []

    def resolve(holder: dict[str, Any], key: str, where: str) -> None:
        value = holder[key]
        try:
            holder[key] = _absolute(value, base_dir)
        except RuntimeError:  # Path.expanduser: no such user
            user = value.split("/", 1)[0]
            problems.append(f"{where}: cannot expand {_show(user, 40)}: no such user (got {_show(value)})")
        except (ValueError, OSError) as exc:
            problems.append(f"{where}: not a usable path: {exc} (got {_show(value)})")

    stages = raw.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, dict):
            continue
        refs: list[tuple[str, Any]] = []
        data = stage.get("data")
        if isinstance(data, dict):
            for part in ("train", "val"):
                if isinstance(data.get(part), list):
                    refs += [(f"stages[{i}].data.{part}[{j}]", ref) for j, ref in enumerate(data[part])]
        if isinstance(stage.get("datasets"), list):
            refs += [(f"stages[{i}].datasets[{j}]", ref) for j, ref in enumerate(stage["datasets"])]
        for key in ("suite", "report_dir"):
            if isinstance(stage.get(key), str) and stage[key]:
                resolve(stage, key, f"stages[{i}].{key}")
        w = stage.get("watch")  # a suite path (a shipped suite's bare name stays a name)
        if isinstance(w, dict) and isinstance(w.get("suite"), str) and w["suite"].endswith((".yaml", ".yml")):
            resolve(w, "suite", f"stages[{i}].watch.suite")
        ds = stage.get("deepspeed")
        if isinstance(ds, dict) and isinstance(ds.get("config_file"), str) and ds["config_file"]:
            resolve(ds, "config_file", f"stages[{i}].deepspeed.config_file")
        m = stage.get("model")
        if stage.get("kind") == "suite_eval" and isinstance(m, str) and m.startswith((".", "/", "~")):
            resolve(stage, "model", f"stages[{i}].model")
        for where, ref in refs:
            if isinstance(ref, dict) and isinstance(ref.get("path"), str) and ref["path"]:
                resolve(ref, "path", f"{where}.path")
            opts = ref.get("metric_options") if isinstance(ref, dict) else None
            for metric, o in (opts.items() if isinstance(opts, dict) else []):
                if isinstance(o, dict) and isinstance(o.get("model_path"), str) and o["model_path"]:
                    resolve(o, "model_path", f"{where}.metric_options.{metric}.model_path")
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str) and model["base"].startswith((".", "/", "~")):
        resolve(model, "base", "model.base")
    return problems


def parse_job_spec(raw: Any, *, source: str, base_dir: Path, overrides: list[str] | None = None) -> JobSpec:
    """Validate a raw (already parsed) spec; see load_job_spec."""
    if not isinstance(raw, dict):
        raise_problems(source, [f"<root>: expected a mapping of job fields (got {type(raw).__name__})"])
    raw = apply_overrides(raw, overrides or [])
    path_problems = _resolve_data_paths(raw, base_dir)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise_problems(source, validation_problems(exc, JobSpec) + path_problems)
    if path_problems:
        raise_problems(source, path_problems)
    problems = graph_problems(spec)
    for i, stage in enumerate(spec.stages):
        problems += [f"stages[{i}].{p}" for p in stage_config_problems(stage)]
    if problems:
        raise_problems(source, problems)
    return spec


def load_job_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Load, override and validate a job spec file.

    Args:
        path: YAML job spec.
        overrides: `KEY=VALUE` strings applied before validation.

    Returns:
        The frozen JobSpec with dataset paths made absolute.

    Raises:
        JobSpecError: listing every problem, each with the dotted field, the bad value and what is allowed.

    Example:
        >>> spec = load_job_spec("jobs/demo_sllm_tiny.yaml", ["stages[0].train.lr=1e-4"])
    """
    path = Path(path)
    raw = read_yaml(path)
    return parse_job_spec(raw, source=str(path), base_dir=path.parent.resolve(), overrides=overrides)


PROFILE_KINDS = ("local", "slurm", "ray")
# keys only a cluster profile has: a file with one of them and no `stages` is read as a profile (and told that
# its `kind` is missing) rather than as a job spec missing its stages
_PROFILE_ONLY_KEYS = frozenset({"nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "partition", "account",
                                "qos", "constraint", "setup", "timeout_min", "mem_gb", "address", "num_workers",
                                "resources_per_worker", "storage_path", "isolation", "gpus", "cpus", "jobs_api",
                                "runtime_env", "max_failures", "signal_delay_s", "max_num_timeout"})


def looks_like_profile(raw: Any) -> bool:
    """A parsed YAML file that is meant as a cluster profile: a mapping without `stages` that has a `kind` (of any
    value: a wrong one is the profile's first problem) or keys only profiles have."""
    if not isinstance(raw, dict) or "stages" in raw:
        return False
    return "kind" in raw or bool(_PROFILE_ONLY_KEYS & {k for k in raw if isinstance(k, str)})


def _kind_problem(raw: dict[str, Any]) -> str | None:
    """A profile's `kind`, checked before anything else: every other field depends on it."""
    kind = raw.get("kind")
    allowed = ", ".join(repr(k) for k in PROFILE_KINDS)
    if "kind" not in raw:
        near = [k for k in raw if isinstance(k, str) and k.strip().lower() == "kind"]
        found = f"; found {_show(near[0])}, did you mean 'kind'?" if near else ""
        return f"kind: required, one of {allowed}{found}"
    if not isinstance(kind, str) or kind not in PROFILE_KINDS:
        close = difflib.get_close_matches(kind, PROFILE_KINDS, n=1) if isinstance(kind, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"kind: expected one of {allowed} (got {_show(kind)}){hint}"
    return None


def load_cluster_profile(path: str | Path) -> LocalProfile | SlurmProfile | RayProfile:
    """Load and validate a cluster profile YAML (raises JobSpecError naming file and field)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise_problems(str(path), [f"<root>: expected a mapping of profile fields (got {type(raw).__name__})"])
    kind_problem = _kind_problem(raw)
    if kind_problem:
        raise_problems(str(path), [kind_problem])
    try:
        return _profile_adapter().validate_python(raw)
    except ValidationError as exc:
        token = _PROFILE_ROOT.set(True)  # a profile's errors start with its kind tag
        try:
            problems = [_format_error(dict(e), LocalProfile) for e in exc.errors()]
        finally:
            _PROFILE_ROOT.reset(token)
        raise_problems(str(path), problems)
    raise AssertionError("unreachable")


def find_cluster_profile(name: str, *, spec_path: Path | None = None) -> LocalProfile | SlurmProfile | RayProfile:
    """Resolve a profile name or path: a file path, or cluster_configs/<name>.yaml next to the spec or CWD.

    The name `local` falls back to the embedded default when no file is found.
    """
    candidates: list[Path] = []
    p = _expanduser(Path(name))
    if p.suffix in {".yaml", ".yml"}:
        candidates.append(p)
    else:
        roots = [Path.cwd()]
        if spec_path is not None:
            roots += list(spec_path.resolve().parents)
        for root in roots:
            candidates.append(root / "cluster_configs" / f"{name}.yaml")
    for c in candidates:
        if _is_file(c):
            return load_cluster_profile(c)
    if name == "local":
        return LocalProfile(kind="local")
    searched = ", ".join(_clip(_printable(str(c)), 200) for c in candidates[:4])
    raise JobSpecError(f"cluster profile {_show(name)} not found (looked in {searched})")


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The resolved spec as plain JSON-able data (written from the object, never re-parsed from argv)."""
    return spec.model_dump(mode="json")


def spec_hash(spec: JobSpec) -> str:
    """Canonical sha256 of the resolved spec (sorted keys, no whitespace)."""
    blob = json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def dump_resolved_yaml(spec: JobSpec) -> str:
    """YAML text of the resolved spec."""
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, allow_unicode=True)


def json_schema() -> dict[str, Any]:
    """JSON schema of the job spec (for editors)."""
    return JobSpec.model_json_schema()
