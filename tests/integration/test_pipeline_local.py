"""Local pipeline against a real MLflow sqlite store: checkpoint resume, bad input leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE

pytestmark = pytest.mark.mlflow


def _spec(tmp: Path, *, asr_path: Path | None = None, max_steps: int = 6) -> Path:
    stages: list[dict] = [{
        "name": "text", "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl"), "max_records": 16}]},
        "train": {"per_device_bsz": 4, "max_steps": max_steps, "lr": 5e-3, "precision": "fp32", "save_steps": 3,
                  "save_total_limit": 2, "logging_steps": 1, "seed": 3, "max_seq_len": 128},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "trainable": ["lora"],
    }]
    if asr_path is not None:
        stages.append({
            "name": "asr", "kind": "asr_adapter", "from_stage": "text",
            "data": {"train": [{"kind": "asr", "path": str(asr_path)}]},
            "train": {"max_steps": 2, "precision": "fp32"}, "trainable": ["projector"],
        })
    stages.append({"name": "merge", "kind": "merge", "from_stage": stages[-1]["name"], "dtype": "float32",
                   "register_as": {"name": "it-model", "alias": "candidate"}})
    spec = {"name": "it-job", "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"), "stages": stages}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    (tmp / "inproc.yaml").write_text("kind: local\nname: inproc\nisolation: inprocess\n", encoding="utf-8")
    return path


def _plan(spec_path: Path):
    from launch.pipeline import build_plan
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    spec = load_job_spec(spec_path)
    return build_plan(spec, spec_path, find_cluster_profile(str(spec_path.parent / "inproc.yaml")))


def test_missing_audio_fails_before_anything_is_created(tmp_path: Path) -> None:
    from sllm_lib.errors import PlanError
    from launch.pipeline import submit_pipeline

    bad = tmp_path / "asr.jsonl"
    bad.write_text('{"audio_path": "nowhere.wav", "transcript": "안녕하세요", "language": "ko"}\n', encoding="utf-8")
    plan = _plan(_spec(tmp_path, asr_path=bad))
    with pytest.raises(PlanError) as err:
        submit_pipeline(plan)
    assert f"{bad}:1" in str(err.value) and "audio_path" in str(err.value)
    assert "nothing was submitted" in str(err.value)
    assert not (tmp_path / "runs").exists()  # no run folder, no sqlite store, no checkpoint, no model


def test_pipeline_registers_and_records_lineage(tmp_path: Path) -> None:
    from launch.pipeline import submit_pipeline
    from sllm_lib.tracking.lineage import walk_lineage

    outcome = submit_pipeline(_plan(_spec(tmp_path)))
    assert outcome.results["text"].steps == 6
    lin = walk_lineage(outcome.tracking_uri, "it-model@candidate")
    assert lin.root.stages() == ["merge", "text"]
    assert lin.pipeline_run_id == outcome.parent_run_id
    (ds,) = lin.root.upstream[0].datasets
    assert ds["name"] == "text_qa_train" and ds["context"] == "train"


def _model_files(client, model_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_logged_model_artifacts(model_id, path):
        out |= _model_files(client, model_id, f.path) if f.is_dir else {f.path}
    return out


def test_stage_outputs_are_logged_models_linked_in_mlflow(tmp_path: Path) -> None:
    """What a teammate sees on a tracking server: each stage's adapter a LoggedModel *output* of its run (files
    downloadable), its log and config as artifacts, the merged model the merge run's output, built from the
    adapter and tied to its registered version, upstream runs as links; `sllm lineage` reads the same links."""
    import json

    from mlflow import MlflowClient

    from launch.pipeline import submit_pipeline
    from sllm_lib.tracking.lineage import walk_lineage

    outcome = submit_pipeline(_plan(_spec(tmp_path)))
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name("it-job")
    assert exp.tags["mlflow.experimentKind"] == "finetuning"  # the UI opens the model-training view

    text_run, merge_run = client.get_run(outcome.run_ids["text"]), client.get_run(outcome.run_ids["merge"])
    (adapter_out,) = text_run.outputs.model_outputs
    adapter = client.get_logged_model(adapter_out.model_id)
    assert adapter.source_run_id == text_run.info.run_id and adapter.model_type == "adapter"
    assert adapter.status == "READY" and adapter.tags["sllm.stage"] == "text"
    assert adapter.params["lora.r"] == "4" and adapter.params["train.max_steps"] == "6"
    assert {m.key for m in adapter.metrics} >= {"final/train_loss"}
    files = _model_files(client, adapter.model_id)
    assert "manifest.json" in files and any(f.endswith(".safetensors") for f in files), files
    local = Path(client.download_artifacts(text_run.info.run_id, "stage", str(tmp_path / "dl")))
    assert "max_steps: 6" in (local / "stage_config.yaml").read_text(encoding="utf-8")  # (stage.log: e2e demo)
    assert outcome.results["text"].extras["model_id"] == adapter.model_id

    (merged_out,) = merge_run.outputs.model_outputs
    assert not merge_run.inputs.model_inputs  # an output, not an input
    merged = client.get_logged_model(merged_out.model_id)
    assert merged.model_type == "merged" and merged.tags["sllm.source_model_ids"] == adapter.model_id
    version = client.get_model_version_by_alias("it-model", "candidate")
    assert json.loads(merged.tags["mlflow.modelVersions"]) == [{"name": "it-model", "version": str(version.version)}]
    assert version.tags["sllm.model_id"] == merged.model_id and version.run_id == merge_run.info.run_id

    view = "?workflowType=machine_learning"  # links land in the UI's model-training view
    note = merge_run.data.tags["mlflow.note.content"]
    assert f"[text](#/experiments/{exp.experiment_id}/runs/{text_run.info.run_id}{view})" in note
    assert f"(#/experiments/{exp.experiment_id}/models/{adapter.model_id}{view})" in merged.tags["mlflow.note.content"]
    assert f"(#/experiments/{exp.experiment_id}/runs/{merge_run.info.run_id}{view})" in version.description
    assert merge_run.data.tags["sllm.upstream_run_ids"] == text_run.info.run_id  # the same ids lineage walks
    pipeline_note = client.get_run(outcome.parent_run_id).data.tags["mlflow.note.content"]
    assert (f"[text](#/experiments/{exp.experiment_id}/runs/{text_run.info.run_id}{view}) → "
            f"[merge](#/experiments/{exp.experiment_id}/runs/{merge_run.info.run_id}{view})") in pipeline_note
    assert f"[it-model@candidate](#/models/it-model{view})" in pipeline_note

    lin = walk_lineage(outcome.tracking_uri, "it-model@candidate")
    assert lin.model_id == merged.model_id and lin.source_model_ids == [adapter.model_id]
    assert lin.root.models == [merged.model_id] and lin.root.upstream[0].models == [adapter.model_id]


def _run_text_stage(spec_path: Path, stage_dir: Path, tracker=None):
    from sllm_lib.spec import load_job_spec
    from sllm_lib.tracking.tracker import RecordingTracker
    from sllm_lib.stage import StageContext
    from sllm_lib.training.runner import run_training_stage

    job = load_job_spec(spec_path)
    tracker = tracker if tracker is not None else RecordingTracker()
    ctx = StageContext(job=job, spec_hash="h", stage_dir=stage_dir, tracker=tracker)
    result = run_training_stage(job.stage("text"), ctx)
    losses = {step: v for k, v, step in tracker.metrics if k == "train/loss"}
    return result, losses


def test_resume_from_latest_complete_checkpoint_repeats_no_step(tmp_path: Path) -> None:
    from sllm_lib.training.runner import COMPLETE_MARKER, latest_complete_checkpoint

    spec_path = _spec(tmp_path)
    _, straight = _run_text_stage(spec_path, tmp_path / "a")

    stage_dir = tmp_path / "b"
    _run_text_stage(spec_path, stage_dir)
    ckpts = stage_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    # simulate a crash: the last checkpoint never happened, a newer one was half-written, no output yet
    shutil.rmtree(ckpts / "checkpoint-6")
    shutil.rmtree(stage_dir / "output")
    (ckpts / "checkpoint-5").mkdir()
    (ckpts / "checkpoint-5" / "trainable.safetensors").write_bytes(b"truncated")
    assert latest_complete_checkpoint(ckpts) == ckpts / "checkpoint-3"
    assert (ckpts / "checkpoint-3" / COMPLETE_MARKER).is_file()

    result, resumed = _run_text_stage(spec_path, stage_dir)
    assert result.steps == 6
    assert sorted(resumed) == [4, 5, 6]  # steps 1-3 came from the checkpoint, none repeated or lost
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5, abs=1e-6)
    assert (stage_dir / "output" / "manifest.json").is_file()


def test_a_resumed_stage_has_one_metric_point_per_step_and_the_whole_stage_loss(tmp_path: Path) -> None:
    """Killed after step 5 with the last complete checkpoint at step 3 (the step-6 checkpoint half-written), then
    run again in the same tracking run: every step is in the run's history once, train_loss and loss first -> last
    equal the uninterrupted run's, and the resume is recorded (issue 22)."""
    from sllm_lib.tracking.tracker import RecordingTracker
    from sllm_lib.training.runner import checkpoint_loss_sum

    spec_path = _spec(tmp_path)
    straight, _ = _run_text_stage(spec_path, tmp_path / "a")

    stage_dir = tmp_path / "b"
    run = RecordingTracker()  # one MLflow run across both attempts
    _run_text_stage(spec_path, stage_dir, run)
    ckpts = stage_dir / "checkpoints"
    assert checkpoint_loss_sum(ckpts / "checkpoint-3")[0] == 3
    shutil.rmtree(ckpts / "checkpoint-6")
    shutil.rmtree(stage_dir / "output")
    resumed, _ = _run_text_stage(spec_path, stage_dir, run)

    steps = [step for key, _, step in run.metrics if key == "train/loss"]
    assert steps == [1, 2, 3, 4, 5, 6]  # 4..6 were trained twice, logged once
    assert [step for key, _, step in run.metrics if key == "data/padding_share"] == [0]
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-5)
    assert (resumed.loss_first, resumed.loss_last) == pytest.approx((straight.loss_first, straight.loss_last), rel=1e-5)
    assert run.tags["sllm.resumed_from_step"] == "3"
    assert [(v, step) for key, v, step in run.metrics if key == "train/resume"] == [(1.0, 3)]


def test_4bit_lora_stage_trains_then_merges_into_an_unquantized_base(tmp_path: Path) -> None:
    """QLoRA path on CPU (bitsandbytes nf4): adapter saved non-empty, merge dequantizes nothing it needs."""
    from safetensors.torch import load_file

    from sllm_lib.spec import load_job_spec
    from sllm_lib.stage import StageContext
    from sllm_lib.training.merge import run_merge
    from sllm_lib.training.runner import run_training_stage

    spec_path = _spec(tmp_path, max_steps=2)
    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    raw["stages"][0]["quant"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    spec_path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    job = load_job_spec(spec_path)
    text_dir = tmp_path / "text"
    result = run_training_stage(job.stage("text"), StageContext(job=job, spec_hash="h", stage_dir=text_dir))
    assert result.steps == 2
    adapter = load_file(str(text_dir / "output" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # it trained
    merged = run_merge(job.stage("merge"), StageContext(job=job, spec_hash="h", stage_dir=tmp_path / "merge",
                                                        chain=[text_dir / "output"]))
    weights = load_file(str(Path(merged.output_dir) / "model.safetensors"))
    assert all(t.dtype.is_floating_point for t in weights.values())  # merged into a 16/32-bit base


def test_rerun_after_the_final_checkpoint_publishes_without_training_more(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    stage_dir = tmp_path / "s"
    first, _ = _run_text_stage(spec_path, stage_dir)
    shutil.rmtree(stage_dir / "output")  # lost after the last checkpoint was written (e.g. a requeue at the end)
    second, losses = _run_text_stage(spec_path, stage_dir)
    assert second.steps == first.steps == 6
    assert losses == {}  # no optimizer step ran again
    assert sorted(p.name for p in (stage_dir / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert (stage_dir / "output" / "adapter").is_dir()
