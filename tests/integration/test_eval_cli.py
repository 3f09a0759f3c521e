"""`sllm eval` on a model folder and on a registry alias: table, samples artifact, eval run, reuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.mlflow


def _eval(args: list[str]) -> int:
    from launch import cli

    return int(cli.app(["eval", *args], standalone_mode=False) or 0)


def test_eval_folder_then_registry_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from sllm_lib.models.builders import materialize_tiny
    from sllm_lib.tracking.tracker import MlflowTracker

    model = Path(shutil.copytree(materialize_tiny("voxtral"), tmp_path / "model"))
    prof = tmp_path / "inproc.yaml"
    prof.write_text("kind: local\nname: inproc\nisolation: inprocess\n", encoding="utf-8")
    common = ["--cluster", str(prof), "--output-dir", str(tmp_path / "runs"), "--sample-limit", "6"]

    assert _eval([str(model), "--suite", "mental_health_cls", *common]) == 0
    out = capsys.readouterr().out
    assert "mental_health" in out and "accuracy" in out and "unparseable_rate" in out
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sllm-eval")
    (run,) = client.search_runs([exp.experiment_id], "tags.`sllm.stage_kind` = 'suite_eval'")
    m = run.data.metrics
    assert {"mental_health/accuracy", "mental_health/macro_f1", "mental_health/unparseable_rate"} <= set(m)
    assert 0.0 <= m["mental_health/accuracy"] <= 1.0 and m["samples_per_s"] > 0
    assert run.data.tags["sllm.eval.suite"] == "mental_health_cls"
    local = client.download_artifacts(run.info.run_id, "eval/samples.jsonl", str(tmp_path))
    rows = [json.loads(x) for x in Path(local).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6 and rows[0]["id"] == "mh-000" and rows[0]["reference"] == "우울"
    assert set(rows[0]["scores"]) == {"accuracy", "macro_f1", "unparseable_rate"}

    # the same folder and suite again: the finished evaluation is reused, no second run
    assert _eval([str(model), "--suite", "mental_health_cls", *common]) == 0
    assert "reused" in capsys.readouterr().out
    assert len(client.search_runs([exp.experiment_id], "tags.`sllm.stage_kind` = 'suite_eval'")) == 1

    # a registered version by alias: downloaded once, pinned to its version, linked into its lineage
    models_exp = client.create_experiment("models")
    merge_run = client.create_run(models_exp).info.run_id
    MlflowTracker(uri, merge_run).log_model(model, name="m", registered_name="it-eval", alias="candidate")
    client.set_terminated(merge_run, "FINISHED")
    assert _eval(["models:/it-eval@candidate", "--suite", "mental_health_cls", *common]) == 0
    assert "is version 1" in capsys.readouterr().out
    runs = client.search_runs([exp.experiment_id], "tags.`sllm.eval.model_name` = 'it-eval'")
    assert len(runs) == 1
    assert runs[0].data.tags["sllm.eval.model_version"] == "1"
    assert merge_run in runs[0].data.tags["sllm.upstream_run_ids"].split(",")
    # same random weights, same greedy decoding: same scores as the folder
    assert runs[0].data.metrics["mental_health/accuracy"] == m["mental_health/accuracy"]
    # the scores are on the logged model too, and the lineage walk lists the evaluation
    from sllm_lib.models.refs import version_model_id
    from sllm_lib.tracking.lineage import walk_lineage

    logged = client.get_logged_model(version_model_id(client.get_model_version("it-eval", "1")))
    assert {"eval/mental_health_cls/mental_health/accuracy"} <= {x.key for x in logged.metrics or []}
    lin = walk_lineage(uri, "it-eval@candidate")
    assert [e["run_id"] for e in lin.evaluations] == [runs[0].info.run_id]


def test_eval_unknown_alias_is_a_clear_error(tmp_path: Path) -> None:
    from sllm_lib.errors import ArtifactNotFoundError

    (tmp_path / "runs").mkdir()
    with pytest.raises(ArtifactNotFoundError, match="nope@candidate"):
        _eval(["models:/nope@candidate", "--suite", "mental_health_cls", "--output-dir", str(tmp_path / "runs")])


def test_a_whisper_baseline_scores_an_asr_suite_and_is_refused_other_tasks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mini:whisper (Whisper base, converted from its wheels) on the English held-out clips: its own decoder
    transcribes in the suite's language, the numbers land in the eval run like any model's; a suite with
    speech QA / text QA tasks is refused before anything runs, with the reason."""
    from mlflow import MlflowClient

    from sllm_lib.errors import PlanError

    prof = tmp_path / "inproc.yaml"
    prof.write_text("kind: local\nname: inproc\nisolation: inprocess\n", encoding="utf-8")
    common = ["--cluster", str(prof), "--output-dir", str(tmp_path / "runs"), "--sample-limit", "12"]
    with pytest.raises(PlanError, match=r"mini:whisper is a Whisper speech recognizer: it scores asr tasks only, "
                                        r"and suite medical_speech_en also has speech_qa \(speech_qa\), text_qa"):
        _eval(["mini:whisper", "--suite", "medical_speech_en", *common])

    assert _eval(["mini:whisper", "--suite", "medical_asr_en", *common]) == 0
    out = capsys.readouterr().out
    assert "medical_asr_en" in out and "wer" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sllm-eval")
    (run,) = client.search_runs([exp.experiment_id], "tags.`sllm.stage_kind` = 'suite_eval'")
    m = run.data.metrics
    # measured: WER ~0.1, CER ~0.05 on these 12 clips (the held-out voice among them; 0.08 / 0.06 on all 40);
    # an unconverted or misaligned model scores ~1.0
    assert m["asr/wer"] < 0.25 and m["asr/cer"] < 0.12, m
    local = client.download_artifacts(run.info.run_id, "eval/samples.jsonl", str(tmp_path))
    rows = [json.loads(x) for x in Path(local).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 12 and sum(r["prediction"].strip() != "" for r in rows) == 12
