"""The recipe of docs/design.md, proven: a new stage kind is one spec model (with its traits) added to
STAGE_MODELS, one stage function and one registry line. A copy of the project gets exactly those three edits
and nothing else, then validates, plans and runs a job with the new kind through the CLI (local executor,
MLflow on sqlite)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import yaml

from tests.conftest import REPO, run_sllm

MODEL = '''

class EchoStage(_StageBase):
    """A test-only stage kind: writes its message into its output folder."""

    kind: Literal["echo"]
    output: ClassVar[Literal["adapter", "model_folder", "scores"]] = "scores"
    message: str = Field(min_length=1, description="What to write.")


'''
FUNCTION = '''

def run_echo(stage: Any, ctx: StageContext) -> StageResult:
    """The test-only echo stage."""
    from sllm_lib.stage import new_output_tmp, publish_output

    tmp = new_output_tmp(ctx)
    (tmp / "echo.txt").write_text(stage.message, encoding="utf-8")
    publish_output(tmp, ctx, {"stage": stage.name, "kind": stage.kind, "spec_hash": ctx.spec_hash})
    ctx.tracker.log_metrics({"echo/chars": float(len(stage.message))})
    return StageResult(stage=stage.name, kind=stage.kind, output_dir=str(ctx.output_dir),
                       metrics={"echo/chars": float(len(stage.message))})


'''


def _copy_project(dst: Path) -> Path:
    for name in ("sllm_lib", "eval", "launch", "cluster_configs"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path}: the recipe's anchor {old!r} is not there once"
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_a_new_stage_kind_needs_a_model_a_function_and_a_registry_line(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    stages = project / "sllm_lib" / "spec" / "stages.py"
    _edit(stages, "\n\nSTAGE_MODELS: tuple[type[_StageBase], ...] = (\n",
          MODEL + "STAGE_MODELS: tuple[type[_StageBase], ...] = (\n    EchoStage,\n")  # 1. the spec model
    registry = project / "launch" / "stages.py"
    _edit(registry, "\n\nSTAGE_FUNCTIONS: dict", FUNCTION + "STAGE_FUNCTIONS: dict")  # 2. the function
    _edit(registry, '    "text_sft": run_text_sft,\n', '    "echo": run_echo,\n    "text_sft": run_text_sft,\n')  # 3.
    spec = tmp_path / "echo.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "echo-job", "output_dir": str(tmp_path / "runs"), "cluster": "local",
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "echo"},
        "stages": [{"name": "hello", "kind": "echo", "message": "안녕하세요"}]}, allow_unicode=True), encoding="utf-8")
    # `python -m` puts its working folder first on sys.path: the edited copy wins over this checkout, and the
    # local executor's workers get the copy first on their PYTHONPATH too

    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text(encoding="utf-8").replace("message:", "mesage:"), encoding="utf-8")
    refused = run_sllm(["validate", str(bad)], project, timeout=120)
    assert refused.returncode == 2 and "mesage: unknown key; did you mean 'message'?" in refused.stdout + refused.stderr
    plan = run_sllm(["plan", str(spec)], project, timeout=120)
    assert plan.returncode == 0 and "echo" in plan.stdout, plan.stdout + plan.stderr
    run = run_sllm(["submit", str(spec)], project, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    (run_dir,) = list((tmp_path / "runs" / "echo-job").iterdir())
    out = run_dir / "stages" / "hello" / "output"
    assert (out / "echo.txt").read_text(encoding="utf-8") == "안녕하세요"
    result = json.loads((run_dir / "stages" / "hello" / "result.json").read_text(encoding="utf-8"))
    assert result["kind"] == "echo" and result["metrics"] == {"echo/chars": 5.0}
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the launcher made its run, the stage logged to it
        (value,) = db.execute("select value from metrics where key = 'echo/chars'").fetchone()
    assert value == 5.0
