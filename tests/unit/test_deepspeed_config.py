"""DeepSpeed configs from a stage's `deepspeed:` block, and the checks before submission (no torch, no DeepSpeed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sllm_lib.errors import JobSpecError
from sllm_lib.spec import DeepSpeedSpec, QuantSpec, load_job_spec
from sllm_lib.deepspeed_config import (
    config_problems,
    effective_config,
    generated_config,
    runtime_config,
)
from tests.conftest import SAMPLE


def _write(tmp: Path, stage_extra: dict[str, Any]) -> Path:
    stage = {"name": "s1", "kind": "text_sft",
             "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]},
             "train": {"max_steps": 4}, "lora": {"r": 4}, "trainable": ["lora"], **stage_extra}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "j", "model": {"base": "tiny:voxtral"}, "stages": [stage]}),
                    encoding="utf-8")
    return path


def test_zero2_config_leaves_batch_fields_to_the_trainer() -> None:
    cfg = generated_config(DeepSpeedSpec(stage=2))
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping"):
        assert cfg[key] == "auto"
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 2 and zero["allgather_bucket_size"] == 200_000_000 and zero["reduce_scatter"] is True
    assert "offload_optimizer" not in zero and "optimizer" not in cfg
    assert not any(k.startswith("stage3_") for k in zero)


def test_zero3_config_gathers_weights_on_save_and_offloads_with_a_cpu_optimizer() -> None:
    cfg = generated_config(DeepSpeedSpec(stage=3, offload_optimizer="cpu", offload_params="cpu", pin_memory=False))
    zero = cfg["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["lr"] == "auto"
    assert config_problems(cfg, QuantSpec()) == []


def test_runtime_config_fills_bucket_sizes_from_the_hidden_size_and_unpins_on_cpu() -> None:
    ds = DeepSpeedSpec(stage=3, offload_optimizer="cpu", stage3_param_persistence_threshold=123)
    cfg = runtime_config(ds, hidden_size=3072, cuda=False)
    zero = cfg["zero_optimization"]
    assert zero["reduce_bucket_size"] == 3072 * 3072
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 3072 * 3072)
    assert zero["stage3_param_persistence_threshold"] == 123  # set explicitly: kept
    assert zero["offload_optimizer"]["pin_memory"] is False
    assert runtime_config(ds, hidden_size=64, cuda=True)["zero_optimization"]["offload_optimizer"]["pin_memory"]


def test_config_file_overrides_key_by_key(tmp_path: Path) -> None:
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"zero_optimization": {"overlap_comm": False, "stage": 3},
                             "communication_data_type": "fp32"}), encoding="utf-8")
    cfg = effective_config(DeepSpeedSpec(stage=2, config_file=str(f)))
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_optimization"]["overlap_comm"] is False
    assert cfg["zero_optimization"]["contiguous_gradients"] is True  # from the generated config
    assert cfg["communication_data_type"] == "fp32" and cfg["train_batch_size"] == "auto"


@pytest.mark.parametrize(("cfg", "quant", "needle"), [
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, QuantSpec(),
     "needs DeepSpeed's CPU optimizer"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, QuantSpec(), "needs ZeRO stage 3"),
    ({"zero_optimization": {"stage": 3}}, QuantSpec(bits=8), "cannot partition bitsandbytes 8-bit"),
    ({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}}, QuantSpec(),
     "empty (partitioned) tensors"),
    ({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}, "optimizer": {"type": "AdamW"}},
     QuantSpec(), "needs ZeRO stage 1, 2 or 3"),
    ({"zero_optimization": {"stage": 5}}, QuantSpec(), "expected 0, 1, 2 or 3"),
])
def test_config_problems_name_the_key(cfg: dict, quant: QuantSpec, needle: str) -> None:
    problems = config_problems(cfg, quant)
    assert any(needle in p for p in problems), problems


def test_offload_with_the_optimizer_forced_off_is_accepted() -> None:
    cfg = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}, "zero_force_ds_cpu_optimizer": False}
    assert config_problems(cfg, QuantSpec()) == []


@pytest.mark.parametrize(("extra", "needle"), [
    ({"deepspeed": {"stage": 3}, "quant": {"bits": 8}}, "quant.bits 8 with deepspeed.stage 3 is not supported"),
    ({"deepspeed": {"stage": 3}, "quant": {"bits": 4, "compute_dtype": "bfloat16", "storage_dtype": "uint8"}},
     "must equal quant.compute_dtype"),
    ({"deepspeed": {"stage": 2, "offload_params": "cpu"}}, "offload_params needs stage 3"),
    ({"deepspeed": {"stage": 0, "offload_optimizer": "cpu"}}, "offload_optimizer needs stage 1, 2 or 3"),
    ({"deepspeed": {"stage": 3, "offload_params": "cpu"}, "quant": {"bits": 4}}, "cannot move bitsandbytes"),
    ({"deepspeed": {"stage": 2, "reduce_bucket_size": 0}}, "expected 'auto' or a positive number"),
])
def test_spec_rejects_incompatible_combinations_naming_the_stage(tmp_path: Path, extra: dict, needle: str) -> None:
    with pytest.raises(JobSpecError) as err:
        load_job_spec(_write(tmp_path, extra))
    text = str(err.value)
    assert needle in text and "stages[0]" in text and str(tmp_path / "job.yaml") in text


def test_spec_checks_an_explicit_config_file(tmp_path: Path) -> None:
    ds_file = tmp_path / "conf" / "ds.json"
    ds_file.parent.mkdir()
    ds_file.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    # relative to the spec's folder; the file adds an offload but no optimizer
    with pytest.raises(JobSpecError) as err:
        load_job_spec(_write(tmp_path, {"deepspeed": {"config_file": "conf/ds.json"}}))
    assert "stages[0].deepspeed.config_file" in str(err.value) and "CPU optimizer" in str(err.value)
    assert str(ds_file) in str(err.value)

    with pytest.raises(JobSpecError, match=r"deepspeed.config_file: cannot read .*missing.json"):
        load_job_spec(_write(tmp_path, {"deepspeed": {"config_file": "missing.json"}}))
    ds_file.write_text("{not json")
    with pytest.raises(JobSpecError, match="is not valid JSON"):
        load_job_spec(_write(tmp_path, {"deepspeed": {"config_file": "conf/ds.json"}}))


def test_valid_deepspeed_spec_loads_with_the_file_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"overlap_comm": False}}))
    job = load_job_spec(_write(tmp_path, {"deepspeed": {"stage": 3, "config_file": "ds.json"},
                                          "quant": {"bits": 4, "compute_dtype": "bfloat16"}}))
    ds = job.stage("s1").deepspeed
    assert ds.stage == 3 and ds.config_file == str(tmp_path / "ds.json")
    assert job.stage("s1").quant.storage == "bfloat16"


def test_validate_does_not_import_torch_or_deepspeed(tmp_path: Path) -> None:
    spec = _write(tmp_path, {"deepspeed": {"stage": 3, "offload_optimizer": "cpu"}})
    code = ("import sys; sys.argv = ['sllm', 'validate', %r]; from launch.cli import app; "
            "app(standalone_mode=False); "
            "assert 'torch' not in sys.modules and 'deepspeed' not in sys.modules, 'heavy import'" % str(spec))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr[-2000:]
