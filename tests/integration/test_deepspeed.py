"""DeepSpeed ZeRO stages for real on CPU (DeepSpeed 0.19, gloo): 2 local ranks, one process, SLURM, resume.

Each stage trains the tiny preset for a few steps; the checks are about what a user keeps: the published adapter
is non-empty and full-shape, reloads, is the same on every rank, the DeepSpeed batch settings agree with the
Trainer's, and a merge after ZeRO-3 QLoRA gives a model whose weights carry the trained deltas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SAMPLE

pytestmark = [pytest.mark.deepspeed, pytest.mark.mlflow]


def _stage(name: str, ds: dict[str, Any], *, steps: int = 4, from_stage: str | None = None, accum: int = 1,
           quant: dict[str, Any] | None = None, save_steps: int = 1000, seed: int = 5) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": name, "kind": "text_sft",
        "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl"), "max_records": 16}]},
        "train": {"per_device_bsz": 2, "grad_accum": accum, "max_steps": steps, "lr": 5e-3, "precision": "fp32",
                  "logging_steps": 1, "save_steps": save_steps, "seed": seed, "max_seq_len": 96},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "trainable": ["lora"], "deepspeed": ds,
    }
    if from_stage:
        s["from_stage"] = from_stage
    if quant:
        s["quant"] = quant
    return s


def _write(tmp: Path, stages: list[dict[str, Any]], *, nproc: int = 2, name: str = "ds") -> tuple[Path, Path]:
    spec = {"name": name, "model": {"base": "tiny:voxtral"}, "output_dir": str(tmp / "runs"), "stages": stages}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    profile = tmp / f"local{nproc}.yaml"
    profile.write_text(f"kind: local\nname: local{nproc}\nnproc: {nproc}\ncpus: 1\n", encoding="utf-8")
    return path, profile


def _submit(spec_path: Path, profile: Path):
    from launch.pipeline import build_plan, submit_pipeline
    from sllm_lib.spec import find_cluster_profile, load_job_spec

    return submit_pipeline(build_plan(load_job_spec(spec_path), spec_path, find_cluster_profile(str(profile))))


def _stage_dirs(tmp: Path, name: str = "ds") -> Path:
    runs = sorted((tmp / "runs" / name).iterdir(), key=lambda p: p.stat().st_mtime)
    return runs[-1] / "stages"


def _adapter(stage_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(stage_dir / "output" / "adapter" / "adapter_model.safetensors"))


def _check_published(stage_dir: Path, *, world: int, micro: int = 2, accum: int = 1) -> dict:
    adapter = _adapter(stage_dir)
    assert adapter, f"{stage_dir.name}: empty adapter"
    for key, t in adapter.items():  # full shape: (r, in) for A, (out, r) for B: never a ZeRO-3 partition
        assert t.numel() > 0 and t.dim() == 2 and 4 in t.shape and max(t.shape) >= 32, (key, tuple(t.shape))
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k), "lora_B never trained"
    manifest = json.loads((stage_dir / "output" / "manifest.json").read_text())
    digests = manifest["trainable_sha256_by_rank"]
    assert len(digests) == world and len(set(digests)) == 1, digests  # the same adapter on every rank
    text = (stage_dir / "deepspeed_config.json").read_text()
    cfg = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c} in the config"))
    assert cfg["train_micro_batch_size_per_gpu"] == micro and cfg["gradient_accumulation_steps"] == accum
    assert cfg["train_batch_size"] == micro * accum * world  # "auto" resolved consistently with the Trainer
    r0 = json.loads((stage_dir / "losses.rank0.json").read_text())
    r1 = json.loads((stage_dir / "losses.rank1.json").read_text())
    assert r0 == r1 and len(r0) >= 2  # both ranks saw the same all-reduced losses
    return adapter


def test_zero2_zero3_qlora_and_offload_on_two_local_ranks_then_merge(tmp_path: Path) -> None:
    """ZeRO-2 -> ZeRO-3 + 4-bit LoRA -> ZeRO-2 + CPU-offloaded optimizer (DeepSpeed's CPU Adam) -> merge."""
    import torch
    from peft import PeftModel

    from sllm_lib.models.builders import load_base_model, resolve_model_path
    from sllm_lib.spec import load_job_spec

    q4 = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    stages = [
        _stage("z2", {"stage": 2}),
        _stage("z3q", {"stage": 3}, from_stage="z2", quant=q4, accum=2),
        _stage("z2off", {"stage": 2, "offload_optimizer": "cpu"}, from_stage="z3q", steps=3),
        {"name": "merge", "kind": "merge", "from_stage": "z2off", "dtype": "float32",
         "register_as": {"name": "ds-model", "alias": "candidate"}},
    ]
    spec_path, profile = _write(tmp_path, stages)
    outcome = _submit(spec_path, profile)
    assert list(outcome.results) == ["z2", "z3q", "z2off", "merge"]
    stages_dir = _stage_dirs(tmp_path)
    _check_published(stages_dir / "z2", world=2)
    _check_published(stages_dir / "z3q", world=2, accum=2)
    _check_published(stages_dir / "z2off", world=2)
    zero = json.loads((stages_dir / "z3q" / "deepspeed_config.json").read_text())["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    off = json.loads((stages_dir / "z2off" / "deepspeed_config.json").read_text())
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and off["optimizer"]["type"] == "AdamW"

    # every adapter reloads onto a full-precision base, the ZeRO-3 QLoRA one onto a 4-bit base too
    job = load_job_spec(spec_path)
    base_path = resolve_model_path(job.model)
    for name, quant in (("z2", None), ("z3q", job.stage("z3q").quant), ("z3q", None), ("z2off", None)):
        base = load_base_model(base_path, model=job.model, quant=quant, dtype="float32")
        reloaded = PeftModel.from_pretrained(base, str(stages_dir / name / "output" / "adapter"))
        lora = {k: v for k, v in reloaded.state_dict().items() if "lora_B" in k}
        assert lora and any(float(v.abs().sum()) > 0 for v in lora.values()), name

    # the merge carries every adapter's delta: q_proj of layer 0 differs from the base by the three LoRA products
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    merged_model = load_base_model(str(stages_dir / "merge" / "output"), model=job.model, quant=None, dtype="float32")
    merged_w = dict(merged_model.named_parameters())[key].detach()
    base_w = dict(load_base_model(base_path, model=job.model, quant=None, dtype="float32").named_parameters())[key]
    expected = base_w.detach().clone()
    stem = "base_model.model." + key.removesuffix(".weight")
    for name in ("z2", "z3q", "z2off"):
        a = _adapter(stages_dir / name)
        expected += (a[f"{stem}.lora_B.weight"] @ a[f"{stem}.lora_A.weight"]) * (8 / 4)  # alpha / r
    assert torch.allclose(merged_w, expected, atol=1e-5), float((merged_w - expected).abs().max())
    assert not torch.allclose(merged_w, base_w)


def test_zero3_with_both_offloads_in_a_single_process_gets_a_world_of_one(tmp_path: Path) -> None:
    """No launcher variables: the stage runner makes a one-rank process group itself (DeepSpeed needs one);
    weights and optimizer offloaded to the CPU (ZeRO-Offload / ZeRO-Infinity's CPU tier)."""
    ds = {"stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"}
    spec_path, profile = _write(tmp_path, [_stage("z3", ds)], nproc=1)
    outcome = _submit(spec_path, profile)
    assert outcome.results["z3"].steps == 4
    stage_dir = _stage_dirs(tmp_path) / "z3"
    cfg = json.loads((stage_dir / "deepspeed_config.json").read_text())
    assert cfg["train_batch_size"] == 2 and cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    adapter = _adapter(stage_dir)
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert json.loads((stage_dir / "output" / "manifest.json").read_text())["world_size"] == 1


def test_zero3_resumes_from_its_deepspeed_checkpoint_to_the_same_adapter(tmp_path: Path, monkeypatch) -> None:
    """Rank 1 fails after step 3 (checkpoint-2 complete); the re-run resumes there (DeepSpeed's partitioned optimizer
    state included) and ends with the adapter an uninterrupted run gives."""
    from sllm_lib.errors import StageFailedError

    stage = _stage("z3", {"stage": 3}, steps=4, save_steps=2)
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    _submit(*_write(straight_dir, [stage]))
    straight = _adapter(_stage_dirs(straight_dir) / "z3")

    monkeypatch.setenv("SLLM_INJECT_FAULT", "step=3,rank=1")
    spec_path, profile = _write(tmp_path, [stage])
    with pytest.raises(StageFailedError):
        _submit(spec_path, profile)
    stage_dir = _stage_dirs(tmp_path) / "z3"
    ckpts = sorted(p.name for p in (stage_dir / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2"], ckpts
    assert (stage_dir / "checkpoints" / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own state
    monkeypatch.delenv("SLLM_INJECT_FAULT")
    outcome = _submit(spec_path, profile)
    assert outcome.results["z3"].steps == 4
    assert "resuming from" in (stage_dir / "stage.log").read_text()
    resumed = _adapter(stage_dir)
    assert resumed.keys() == straight.keys()
    worst = max(float((resumed[k] - straight[k]).abs().max()) for k in resumed)
    assert worst <= 1e-5, f"resumed adapter differs from the uninterrupted one by {worst}"


@pytest.mark.slurm
def test_zero3_qlora_stage_on_two_slurm_tasks(slurm_cluster, tmp_path: Path) -> None:
    from launch.slurm import SlurmExecutor
    from sllm_lib.spec import SlurmProfile
    from tests.integration.test_slurm_executor import _request

    q4 = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    req = _request(tmp_path, _stage("z3q", {"stage": 3}, quant=q4, steps=3))
    profile = SlurmProfile(kind="slurm", name="t", partition="debug", nodes=1, tasks_per_node=2, cpus_per_task=1,
                           mem_gb=4, timeout_min=10, python="submitting")
    result = SlurmExecutor(profile).submit(req).result(timeout_s=420)
    assert result.steps == 3
    _check_published(Path(req.stage_dir), world=2)


@pytest.mark.ray
def test_zero3_qlora_stage_on_two_ray_workers(ray_head, tmp_path: Path) -> None:
    """Ray Train makes the process group before the stage; DeepSpeed must join it (gloo), not make another."""
    q4 = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    spec_path, _ = _write(tmp_path, [_stage("z3q", {"stage": 3}, quant=q4, steps=3, save_steps=2)])
    profile = tmp_path / "ray.yaml"
    profile.write_text(yaml.safe_dump({"kind": "ray", "name": "ray-ds", "address": ray_head.gcs_address,
                                       "num_workers": 2, "resources_per_worker": {"CPU": 1}}), encoding="utf-8")
    outcome = _submit(spec_path, profile)
    assert outcome.results["z3q"].steps == 3
    stage_dir = _stage_dirs(tmp_path) / "z3q"
    _check_published(stage_dir, world=2)
    reported = list((stage_dir.parent.parent / "ray").rglob("global_step2"))  # DeepSpeed's state reached Ray's storage
    assert reported, "checkpoint-2 (with DeepSpeed's global_step2) was not reported to Ray's storage"
