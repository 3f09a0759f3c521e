"""One rule, checked by property: whatever `sllm validate` accepts, `sllm plan` accepts, and whatever `plan`
accepts, `sllm submit --dry-run` (every check up to the first stage) accepts; a refusal anywhere is a clean
error (exit 2), never a traceback. The one exception is named: whether the models fit the chosen cluster is
the plan's to say (validate judges the spec without a profile and without torch); plan and submit then refuse
with the same message.

The examples start from the shipped tiny specs and mutate them with the classes of input that once got through
`validate` and crashed `submit` (names, output folders, model references, booleans and magnitudes where numbers
belong, misspelt keys and kinds). Derandomized (a fixed example sequence: a flaky test blocks landing), no example
database; the CLI runs in this process, so the memory planner's models are built once.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sllm_lib.errors import SllmError

REPO = Path(__file__).resolve().parents[3]
SPECS = ["demo_sllm_tiny.yaml", "medqa_tiny.yaml", "mental_health_tiny.yaml", "sweep_text_lora_tiny.yaml"]
EXAMPLES = 250


def run_cli(args: list[str]) -> tuple[int, str]:
    """`sllm ARGS` in this process, as the console script ends: (0, ""), or (2, the message) for a clean error;
    anything else (a traceback) raises."""
    from launch.cli import app

    try:
        rc = app(args, standalone_mode=False)
    except (SllmError, click.ClickException) as exc:
        return 2, str(exc)
    except SystemExit as exc:
        return int(exc.code or 0), ""
    return int(rc or 0), ""


def _memory_refusal(message: str) -> bool:
    """The one refusal validate cannot make: whether a spec's models fit the chosen cluster (it needs the profile
    and the planner, which imports torch; validate must not)."""
    return message.startswith("memory check failed") or "does not fit cluster profile" in message


def _raw(name: str) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "jobs" / name).read_text(encoding="utf-8"))
    for stage in raw["stages"]:  # the spec's data paths are relative to jobs/: make them absolute
        for part in ("train", "val"):
            for ref in (stage.get("data") or {}).get(part) or []:
                ref["path"] = str((REPO / "jobs" / ref["path"]).resolve())
        for ref in stage.get("datasets") or []:
            ref["path"] = str((REPO / "jobs" / ref["path"]).resolve())
    return raw


BASES = {name: _raw(name) for name in SPECS}


def _numeric_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to an int or float (not bool) in the spec: where booleans and absurd magnitudes go."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _numeric_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _numeric_paths(v, (*prefix, i))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        out.append(prefix)
    return out


def _set(root: dict[str, Any], path: tuple, value: Any) -> None:
    node = root
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@st.composite
def mutated_spec(draw: Any, scratch: Path) -> dict[str, Any]:
    raw = copy.deepcopy(BASES[draw(st.sampled_from(SPECS))])
    raw["output_dir"] = str(scratch / "runs")
    a_file = scratch / "a-file"
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["name", "output_dir", "model", "number", "key", "stage_kind"]))
        if kind == "name":
            raw["name"] = draw(st.sampled_from(["x" * 100, "x" * 101, "x" * 300, "a/b", "..", "-x", "로그", "ok.v2",
                                                 "a" * 60 + "." + "b" * 39]))
        elif kind == "output_dir":
            raw["output_dir"] = draw(st.sampled_from([
                str(a_file), str(a_file / "below"), "/dev/null", "/proc/sllm", "/etc", "", ".",
                str(scratch / ("d" * 300)), str(scratch / "new" / "deeper"), "relative/runs"]))
        elif kind == "model":
            raw.setdefault("model", {})["base"] = draw(st.sampled_from([
                "", " ", "tiny:nope", "tiny:llama", "tiny:voxtral", "/nonexistent/model", "org/name/extra", "a b",
                "Qwen/Qwen2.5-3B-Instruct", str(a_file)]))
        elif kind == "number":
            paths = _numeric_paths(raw)
            if paths:
                value = draw(st.sampled_from([True, False, 0, -1, 10**12, 1e30, "abc", "1e3", None, 0.5]))
                _set(raw, draw(st.sampled_from(paths)), value)
        elif kind == "key":
            stage = draw(st.sampled_from(raw["stages"]))
            key = draw(st.sampled_from(["learning_rate", "KIND", "lr ", "train", "data", "from_stage", "name"]))
            if key in stage and draw(st.booleans()):
                del stage[key]
            else:
                stage[key] = draw(st.sampled_from([1e-4, "text_sft", {}, None, "merge"]))
        else:
            stage = draw(st.sampled_from(raw["stages"]))
            stage["kind"] = draw(st.sampled_from(["text_sfft", "asr_adaptor", "merge", "eval", "", "TEXT_SFT",
                                                  "distill", "suite_eval"]))
    return raw


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("validate-submit")
    (root / "a-file").write_text("not a folder\n", encoding="utf-8")
    return root


def test_validate_implies_plan_implies_submit_dry_run(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scratch)  # relative output folders land in the scratch folder
    counts = {"cases": 0, "refused_by_validate": 0, "memory_refusals": 0, "accepted": 0}

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(raw=mutated_spec(scratch))
    def check(raw: dict[str, Any]) -> None:
        counts["cases"] += 1
        spec = scratch / "spec.yaml"
        spec.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
        rc, _ = run_cli(["validate", str(spec)])
        if rc:
            counts["refused_by_validate"] += 1
            return
        rc, why = run_cli(["plan", str(spec), "--no-show-spec"])
        if rc and _memory_refusal(why):  # plan and submit agree on it, word for word
            assert run_cli(["submit", str(spec), "--dry-run"]) == (2, why)
            counts["memory_refusals"] += 1
            return
        assert rc == 0, f"validate passed, plan refused ({why}):\n{spec.read_text()}"
        rc, why = run_cli(["submit", str(spec), "--dry-run"])
        assert rc == 0, f"validate and plan passed, submit --dry-run refused ({why}):\n{spec.read_text()}"
        counts["accepted"] += 1
        run_folder = Path(raw["output_dir"]) / raw["name"]
        assert raw["output_dir"] in ("", ".") or not run_folder.exists(), "a dry run created the run folder"

    check()
    print(f"validate => plan => submit --dry-run: {counts}")
    assert counts["cases"] == EXAMPLES
    assert counts["accepted"] >= 5 and counts["refused_by_validate"] >= 20, counts  # both sides exercised
