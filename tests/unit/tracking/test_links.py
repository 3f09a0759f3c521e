"""The links sllm writes into MLflow: model names, UI links, run notes, pointer uploads, upstream model ids."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sllm_lib.stage import RESULT_FILE, upstream_model_ids
from sllm_lib.tracking.lineage import version_model_id
from sllm_lib.tracking.tracker import (POINTER_FILE, logged_model_name, model_files, run_link, stage_note,
                                       ui_link)


def test_logged_model_name_drops_what_mlflow_refuses() -> None:
    assert logged_model_name("demo.v2", "text_lora") == "demo-v2-text_lora"
    assert logged_model_name("a/b:c%d'e\"f") == "a-b-c-d-e-f"


def test_links_open_the_training_view() -> None:
    assert ui_link("/experiments/3") == "#/experiments/3?workflowType=machine_learning"
    assert run_link("3", "abc") == "#/experiments/3/runs/abc?workflowType=machine_learning"


def test_stage_note_links_pipeline_and_every_upstream_run() -> None:
    note = stage_note(job="j", stage="merge", kind="merge", experiment_id="7", pipeline_run_id="p" * 32,
                      upstream={"text": "r1", "asr": "r2"})
    assert "sllm stage **merge** (`merge`) of job **j**" in note
    assert f"({run_link('7', 'p' * 32)})" in note
    assert f"[text]({run_link('7', 'r1')}), [asr]({run_link('7', 'r2')})" in note
    first = stage_note(job="j", stage="text", kind="text_sft", experiment_id="7", pipeline_run_id="p", upstream={})
    assert "no upstream stage" in first


def test_pointer_upload_keeps_configs_and_names_the_weights(tmp_path: Path) -> None:
    model = tmp_path / "output"
    (model / "adapter").mkdir(parents=True)
    (model / "manifest.json").write_text("{}", encoding="utf-8")
    (model / "adapter" / "adapter_config.json").write_text('{"r": 8}', encoding="utf-8")
    (model / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    (model / "big.txt").write_bytes(b"x" * (5 * 2**20))  # large, though not a weight suffix
    with model_files(model, "pointer") as up:
        got = sorted(str(p.relative_to(up)) for p in up.rglob("*") if p.is_file())
        pointer = json.loads((up / POINTER_FILE).read_text(encoding="utf-8"))
    assert got == sorted(["manifest.json", "adapter/adapter_config.json", POINTER_FILE])
    assert pointer["path"] == str(model.resolve())
    assert {x["path"] for x in pointer["not_uploaded"]} == {"adapter/adapter_model.safetensors", "big.txt"}
    assert not up.exists()  # the temp copy is gone after the upload
    with model_files(model, "all") as up:
        assert up == model
    with pytest.raises(ValueError, match="tracking.model_files"):
        with model_files(model, "weights"):
            pass


def test_upstream_model_ids_follow_result_files_and_sweep_links(tmp_path: Path) -> None:
    text = tmp_path / "stages" / "text"
    (text / "output").mkdir(parents=True)
    (text / RESULT_FILE).write_text(json.dumps({"extras": {"model_id": "m-text"}}), encoding="utf-8")
    swept = tmp_path / "stages" / "asr"
    (swept / "points" / "1" / "output").mkdir(parents=True)
    (swept / "points" / "1" / RESULT_FILE).write_text(json.dumps({"extras": {"model_id": "m-point1"}}),
                                                      encoding="utf-8")
    (swept / "output").symlink_to(Path("points") / "1" / "output")
    old = tmp_path / "stages" / "old"
    (old / "output").mkdir(parents=True)  # a stage run before models were logged: no result model id
    (old / RESULT_FILE).write_text(json.dumps({"extras": {}}), encoding="utf-8")
    assert upstream_model_ids([text / "output", swept / "output", old / "output"]) == ["m-text", "m-point1"]


@pytest.mark.parametrize(("mv", "want"), [
    (SimpleNamespace(model_id="m-a", tags={}, source="x"), "m-a"),
    (SimpleNamespace(model_id=None, tags={"sllm.model_id": "m-b"}, source="x"), "m-b"),
    (SimpleNamespace(model_id=None, tags={}, source="models:/m-c"), "m-c"),
    (SimpleNamespace(model_id=None, tags={}, source="runs:/abc/model"), None),
])
def test_version_model_id(mv: SimpleNamespace, want: str | None) -> None:
    assert version_model_id(mv) == want


def test_lineage_shows_task_scores_not_copies_or_counters() -> None:
    from sllm_lib.tracking.lineage import task_scores

    logged = {"asr/cer": 0.2, "eval/medical_speech/asr/cer": 0.2, "cache/bytes_read": 1e6, "cache/hits": 3.0,
              "text_qa/rougeL": 0.4, "asr/runtime_s": 9.0, "data/padding_share": 0.1, "aac/bleu": 0.06}
    assert task_scores(logged) == {"aac/bleu": 0.06, "asr/cer": 0.2, "text_qa/rougeL": 0.4}
