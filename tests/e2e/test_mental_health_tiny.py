"""Multi-task mental-health classification by instruction tuning, end to end through the CLI on the tiny causal
LM: five classification datasets mixed by weight -> merge (registered) -> per-task accuracy, macro-F1 and label
parse failures."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_sllm

pytestmark = pytest.mark.e2e

SPEC = REPO / "jobs" / "mental_health_tiny.yaml"
TASKS = ["emotion", "stress", "depression", "severity", "suicidal_ideation"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("mental_health")
    proc = run_sllm(["submit", str(SPEC)], cwd=work)
    assert proc.returncode == 0, f"failed:\nSTDOUT\n{proc.stdout[-4000:]}\nSTDERR\n{proc.stderr[-4000:]}"
    (state_file,) = list((work / "runs" / "mental-health-tiny").glob("*/state.json"))
    return {"stdout": proc.stdout, "state": json.loads(state_file.read_text()), "run_dir": state_file.parent}


def test_training_mixes_the_five_tasks_and_learns(run: dict) -> None:
    result = run["state"]["stages"]["multitask_sft"]["result"]
    assert result["steps"] == 40 and result["loss_last"] < result["loss_first"] / 2, result
    stdout = run["stdout"]
    for task in TASKS:
        assert f"dataset {task}_train [train]" in stdout and f"dataset {task}_val [validation]" in stdout


def test_every_task_is_scored_with_accuracy_macro_f1_and_parse_failures(run: dict) -> None:
    metrics = run["state"]["stages"]["eval"]["result"]["metrics"]
    for task in TASKS:
        for name in ("accuracy", "macro_f1", "unparseable_rate"):
            value = metrics[f"{task}/{name}"]
            assert 0.0 <= value <= 1.0, (task, name, value)
    preds = [json.loads(x) for x in (run["run_dir"] / "stages" / "eval" / "output" / "predictions.jsonl")
             .read_text().splitlines()]
    assert {p["dataset"] for p in preds} == set(TASKS)
    for task in TASKS:  # the per-task scores are the means of the per-sample ones
        rows = [p for p in preds if p["dataset"] == task]
        acc = sum(p["accuracy"] for p in rows) / len(rows)
        assert acc == pytest.approx(metrics[f"{task}/accuracy"])
        bad = sum(p["unparseable_rate"] for p in rows) / len(rows)
        assert bad == pytest.approx(metrics[f"{task}/unparseable_rate"])
    # the binary tasks share the labels 있음/없음: after 40 steps the model answers them in the label set
    assert metrics["stress/unparseable_rate"] < 1.0 and metrics["suicidal_ideation/unparseable_rate"] < 1.0


def test_device_export_writes_16bit_4bit_8bit_folders_and_a_cpu_report(run: dict, tmp_path) -> None:
    out = tmp_path / "device"
    proc = run_sllm(["export", "mental-health-tiny@candidate", "-o", str(out), "--variants", "bf16,bnb4,bnb8",
                     "--cpu-report"], cwd=run["run_dir"].parent.parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(out / "bf16" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    for variant, marker in (("bnb4", "quant_state.bitsandbytes__nf4"), ("bnb8", ".SCB")):
        with safe_open(str(out / variant / "model.safetensors"), "pt") as f:
            assert any(marker in k for k in f.keys()), variant  # really quantized, not a copy
        cfg = json.loads((out / variant / "config.json").read_text())
        assert cfg["quantization_config"]["quant_method"] == "bitsandbytes"
        assert "Device variant: **" + variant in (out / variant / "README.md").read_text()
    report = json.loads((out / "cpu_report.json").read_text())
    assert set(report) == {"as merged", "bf16", "bnb4", "bnb8"}
    for name, row in report.items():
        assert "error" not in row, (name, row)
        assert row["size_mb"] > 0 and row["peak_rss_mb"] > 0 and row["ms_per_token"] > 0 and row["new_tokens"] == 32
    assert report["bf16"]["size_mb"] < 0.6 * report["as merged"]["size_mb"]  # fp32 merged -> bf16 halves it
    assert "| bnb4 |" in (out / "README.md").read_text() and "| bnb4 |" in proc.stdout
