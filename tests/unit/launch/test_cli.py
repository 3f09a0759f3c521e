"""Tests for the `sllm` command line, run as a subprocess (no training, no heavy imports)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from sllm_lib.spec import load_job_spec, spec_hash
from tests.conftest import REPO, run_sllm, sllm_env

DEMO = REPO / "jobs" / "demo_sllm_tiny.yaml"
SAMPLE = REPO / "data" / "sample"
STAGES = ["text_lora", "asr_projector", "multitask", "merge", "eval"]
HEAVY = ("torch", "transformers", "mlflow", "peft", "accelerate", "bitsandbytes", "ray")


def sllm(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return run_sllm(list(args), cwd, timeout=60)


def write_spec(tmp_path: Path, raw: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def small_raw(train_path: str) -> dict[str, Any]:
    return {
        "name": "cli",
        "model": {"base": "tiny:voxtral"},
        "stages": [
            {"name": "sft", "kind": "text_sft", "trainable": ["lora"], "lora": {"r": 4},
             "data": {"train": [{"kind": "text_qa", "path": train_path}]}, "train": {"max_steps": 2}},
            {"name": "merge", "kind": "merge", "from_stage": "sft"},
        ],
    }


@pytest.fixture
def bad_spec(tmp_path: Path) -> Path:
    raw = small_raw(str(SAMPLE / "text_qa_train.jsonl"))
    raw["stages"][0]["train"].update(lr=-1, lr_warmup=2)
    raw["bogus"] = True
    return write_spec(tmp_path, raw, "bad.yaml")


# ------------------------------------------------------------------------------------------ validate


def test_validate_demo_ok() -> None:
    res = sllm("validate", "jobs/demo_sllm_tiny.yaml")
    assert res.returncode == 0, res.stderr
    h = spec_hash(load_job_spec(DEMO))
    assert res.stdout.strip() == f"OK jobs/demo_sllm_tiny.yaml: job 'demo-sllm-tiny', 5 stages, hash {h[:12]}"
    assert "error" not in res.stderr


def test_validate_cluster_profile_ok() -> None:
    res = sllm("validate", "cluster_configs/local.yaml")
    assert res.returncode == 0, res.stderr
    assert "OK cluster_configs/local.yaml: cluster profile 'local' (local)" in res.stdout


def test_validate_bad_spec_exits_2_with_every_problem(bad_spec: Path) -> None:
    res = sllm("validate", str(bad_spec))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert "OK" not in res.stdout
    assert f"error: {bad_spec}: 3 problems" in res.stderr
    assert "stages[0].train.lr: Input should be greater than 0 (got -1)" in res.stderr
    assert "stages[0].train.lr_warmup: unknown key; did you mean 'warmup_steps'?" in res.stderr
    assert "bogus: unknown key" in res.stderr


def test_validate_reports_good_and_bad_files(bad_spec: Path) -> None:
    res = sllm("validate", str(DEMO), str(bad_spec))
    assert res.returncode == 2
    assert f"OK {DEMO}" in res.stdout
    assert f"{bad_spec}: 3 problems" in res.stderr


def test_validate_with_set_override() -> None:
    ok = sllm("validate", "jobs/demo_sllm_tiny.yaml", "--set", "stages.eval.generation.batch_size=2")
    assert ok.returncode == 0, ok.stderr
    bad = sllm("validate", "jobs/demo_sllm_tiny.yaml", "--set", "stages[7].train.lr=1")
    assert bad.returncode == 2
    assert "index 7 out of range (list has 5 items)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_validate_missing_file() -> None:
    res = sllm("validate", "jobs/nope.yaml")
    assert res.returncode == 2
    assert "jobs/nope.yaml: file not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_debug_shows_traceback(bad_spec: Path) -> None:
    res = sllm("--debug", "validate", str(bad_spec))
    assert res.returncode not in (0, 2)
    assert "Traceback" in res.stderr
    flat = " ".join(res.stderr.split())  # the traceback renderer wraps long lines
    assert "SllmError" in flat
    assert "3 problems" in flat


@pytest.mark.parametrize(
    ("args", "message"),
    [(["validate", "jobs/demo_sllm_tiny.yaml", "--no-such-option"], "No such option"),
     (["plan"], "Missing")],
    ids=["unknown-option", "missing-argument"],
)
def test_usage_error_exits_2_without_traceback(args: list[str], message: str) -> None:
    res = sllm(*args)
    assert "Traceback" not in res.stderr
    assert res.returncode == 2
    assert message in res.stderr


# ------------------------------------------------------------------------------------------ import cost

_HARNESS = textwrap.dedent("""
    import json, sys
    args = json.loads(sys.argv[1])
    sys.argv = ["sllm", *args["argv"]]
    for name in args["preimport"]:
        __import__(name)
    from launch.cli import main
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    heavy = sorted(m for m in args["heavy"] if m in sys.modules)
    print("RESULT " + json.dumps({"code": code, "heavy": heavy, "spec": "sllm_lib.spec" in sys.modules}))
""")


def run_harness(argv: list[str], preimport: list[str] | None = None) -> tuple[dict[str, Any], str]:
    payload = json.dumps({"argv": argv, "preimport": preimport or [], "heavy": list(HEAVY)})
    res = subprocess.run([sys.executable, "-c", _HARNESS, payload], cwd=REPO, env=sllm_env(),
                         capture_output=True, text=True, timeout=60)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"harness printed no result\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return json.loads(lines[-1][len("RESULT "):]), res.stdout


def test_help_imports_nothing_heavy() -> None:
    result, out = run_harness(["--help"])
    assert result["code"] in (0, None)
    assert "validate" in out and "plan" in out
    assert result["heavy"] == []


def test_validate_imports_nothing_heavy() -> None:
    result, out = run_harness(["validate", "jobs/demo_sllm_tiny.yaml"])
    assert result["code"] in (0, None)
    assert "OK jobs/demo_sllm_tiny.yaml" in out  # the command really ran ...
    assert result["spec"] is True  # ... and loaded the spec module
    assert result["heavy"] == []


def test_import_harness_detects_heavy_modules() -> None:
    # control: the same harness reports torch when something did import it
    result, _ = run_harness(["validate", "jobs/demo_sllm_tiny.yaml"], preimport=["torch"])
    assert "torch" in result["heavy"]


# ------------------------------------------------------------------------------------------ schema


def test_schema_to_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    res = sllm("schema", "-o", str(out))
    assert res.returncode == 0, res.stderr
    schema = json.loads(out.read_text(encoding="utf-8"))
    assert "stages" in schema["properties"]
    assert "wrote" in res.stdout


def test_schema_to_stdout() -> None:
    res = sllm("schema")
    assert res.returncode == 0, res.stderr
    assert "stages" in json.loads(res.stdout)["properties"]


# ------------------------------------------------------------------------------------------ plan


def test_plan_lists_stages_and_writes_nothing(tmp_path: Path) -> None:
    res = sllm("plan", str(DEMO), "--no-show-spec", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for name in STAGES:
        assert name in res.stdout
    h = spec_hash(load_job_spec(DEMO))
    assert h[:12] in res.stdout
    assert f"run dir: {tmp_path.resolve() / 'runs' / 'demo-sllm-tiny' / h[:12]}" in res.stdout
    assert "resolved spec" not in res.stdout
    assert not (tmp_path / "runs").exists()
    assert list(tmp_path.iterdir()) == []


def test_plan_shows_resolved_spec_by_default(tmp_path: Path) -> None:
    res = sllm("plan", str(DEMO), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resolved spec" in res.stdout
    assert str(SAMPLE / "asr_val.jsonl") in res.stdout  # dataset paths shown resolved
    assert list(tmp_path.iterdir()) == []


def test_plan_missing_dataset_exits_2_naming_the_path(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, small_raw("data/missing_train.jsonl"))
    res = sllm("plan", str(spec), "--no-show-spec", cwd=tmp_path)
    assert res.returncode == 2
    assert "pre-flight checks failed" in res.stderr
    assert str(tmp_path / "data" / "missing_train.jsonl") in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


def test_plan_unknown_cluster(tmp_path: Path) -> None:
    res = sllm("plan", str(DEMO), "--cluster", "nope", cwd=tmp_path)
    assert res.returncode == 2
    assert "cluster profile 'nope' not found" in res.stderr


# ------------------------------------------------------------------------------------------ data validate


def test_data_validate_good_file() -> None:
    res = sllm("data", "validate", str(SAMPLE / "text_qa_val.jsonl"), "--kind", "text_qa")
    assert res.returncode == 0, res.stderr
    assert "16 good records, 0 bad" in res.stdout


def test_data_validate_classification_checks_the_label_set(tmp_path: Path) -> None:
    data = tmp_path / "stress.jsonl"
    rows = [{"text": "일이 많아요", "label": "있음"}, {"text": "편해요", "label": "없음"}, {"text": "글쎄요", "label": "모름"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    res = sllm("data", "validate", str(data), "--kind", "classification", "--labels", "있음,없음")
    assert res.returncode == 2 and "2 good records, 1 bad" in res.stdout
    assert f"{data}:3: field 'label': expected one of ['있음', '없음'] (got '모름')" in res.stderr
    res = sllm("data", "validate", str(data), "--kind", "classification")
    assert res.returncode == 2 and "need the dataset's label set" in res.stderr


def test_data_validate_broken_line_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    good = json.dumps({"instruction": "q", "input": "", "output": "a"})
    data.write_text(good + "\n{broken\n" + json.dumps({"instruction": "q", "output": ""}) + "\n", encoding="utf-8")
    res = sllm("data", "validate", str(data), "--kind", "text_qa")
    assert res.returncode == 2
    assert "1 good records, 2 bad" in res.stdout
    assert f"{data}:2: invalid JSON" in res.stderr
    assert f"{data}:3: field 'output': expected non-empty text" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------ error text


def test_error_text_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    data = tmp_path / "asr.jsonl"
    rows = [{"audio_path": "audio/[spk01]/a.wav", "transcript": "hi"},
            {"audio_path": str(SAMPLE / "audio" / "asr_000.wav"), "transcript": "ok"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    res = sllm("data", "validate", str(data), "--kind", "asr")
    assert res.returncode == 2
    error_lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert error_lines and "audio/[spk01]/a.wav" in error_lines[0]


def test_error_text_with_closing_tag_does_not_crash(tmp_path: Path) -> None:
    raw = small_raw(str(SAMPLE / "text_qa_train.jsonl"))
    raw["stages"][0]["train"]["lr"] = "[/oops]"
    res = sllm("validate", str(write_spec(tmp_path, raw)))
    assert "Traceback" not in res.stderr
    assert res.returncode == 2
    assert "(got '[/oops]')" in res.stderr


def test_data_stats_prints_percentiles_and_padding_share() -> None:
    res = sllm("data", "stats", str(REPO / "data" / "sample" / "text_qa_train.jsonl"), "--kind", "text_qa")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for col in ("p50", "p90", "p95", "p99", "prompt", "target", "total"):
        assert col in out
    assert "64 records" in out
    assert "padding share at batch size 8: random" in out and "length-grouped" in out


def test_data_stats_with_a_model_whose_tokenizer_cannot_load_is_a_clean_error(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "remote-code-model"  # a config naming code that is not there, and no tokenizer files
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "exaone", "architectures": ["ExaoneForCausalLM"],
                                                    "auto_map": {"AutoConfig": "configuration_exaone.ExaoneConfig"}}))
    res = sllm("data", "stats", str(REPO / "data" / "sample" / "text_qa_train.jsonl"), "--kind", "text_qa",
               "--model", str(folder))
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"--model {folder}: its tokenizer could not be loaded" in res.stderr
    assert "--trust-remote-code" in res.stderr


def test_plan_on_ray_renders_trainers_without_touching_a_cluster() -> None:
    result, out = run_harness(["plan", "jobs/demo_sllm_tiny.yaml", "--cluster", "ray_local", "--no-show-spec"])
    assert result["code"] in (0, None), out
    assert "TorchTrainer(2 x" in out and "TorchTrainer(1 x" in out and "gloo" in out  # training vs merge/eval
    assert "ray" not in result["heavy"]  # no head started, no Ray imported


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: {a: 1}\nname: x\n", "kind: expected one of 'local', 'slurm', 'ray' (got {'a': 1})"),
    ("kind: [slurm]\nname: x\n", "kind: expected one of 'local', 'slurm', 'ray' (got ['slurm'])"),
    ("name: x\nnodes: 2\n", "kind: required, one of 'local', 'slurm', 'ray'"),  # was read as a job spec
])
def test_validate_a_profile_with_a_bad_kind_is_a_clean_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(text, encoding="utf-8")
    res = sllm("validate", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert expected in res.stderr


def test_validate_refuses_what_submit_could_not_start(tmp_path: Path) -> None:
    """An output folder that cannot be made and a data file that does not read: validate says so, as submit would."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    raw = small_raw(str(SAMPLE / "text_qa_train.jsonl"))
    raw["output_dir"] = str(a_file / "runs")
    res = sllm("validate", str(write_spec(tmp_path, raw)))
    assert res.returncode == 2 and f"output_dir: {a_file} is a file" in res.stderr, res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n', encoding="utf-8")
    raw = small_raw(str(bad))
    raw["output_dir"] = str(tmp_path / "runs")
    res = sllm("validate", str(write_spec(tmp_path, raw)))
    assert res.returncode == 2 and f"{bad}:1" in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists()
