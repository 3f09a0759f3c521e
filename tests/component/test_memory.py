"""Tests for the memory planner (sllm_lib.memory): exact bytes against real tensors, known arithmetic for the
shipped 3B / 8B configs, ZeRO partitioning, suggestions and config resolution."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sllm_lib.errors import ArtifactNotFoundError, JobSpecError
from sllm_lib.memory import (
    GB, DtypeRules, StageMemory, account_model, bundled_config_path, load_model_config, lora_numel, plan_memory,
    quant4_bytes, quant8_bytes, stage_variant, suggest, weight_bytes_by_group,
)
from sllm_lib.spec import (
    LocalProfile, LoraSpec, ModelSpec, QuantSpec, SlurmProfile, load_cluster_profile, load_job_spec, parse_job_spec,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
VOXTRAL_SPEC = REPO / "jobs" / "sllm_voxtral_3stage.yaml"
TINY = ModelSpec(base="tiny:voxtral")
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CPU1 = LocalProfile(kind="local")


def job(base: str, stage: dict[str, Any], tmp_path: Path | None = None) -> Any:
    """A one-stage job around `stage` (text_sft on the sample text QA by default)."""
    s = {"name": "s", "kind": "text_sft", "trainable": ["lora"], "lora": {"r": 8},
         "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]},
         "train": {"max_steps": 10}}
    s.update(stage)
    raw = {"name": "mem", "model": {"base": base}, "stages": [s]}
    return parse_job_spec(raw, source="<test>", base_dir=tmp_path or REPO)


def gpus(n: int, gb: float | None = None) -> SlurmProfile:
    return SlurmProfile(kind="slurm", name=f"gpu{n}", nodes=1, gpus_per_node=n, gpu_memory_gb=gb)


# ------------------------------------------------------------------------------------------ real tensors


def _real_group_bytes(model: Any, groups: dict[str, str]) -> dict[str, int]:
    """Bytes of every parameter and its bitsandbytes state, per planner group (shared storage counted once)."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        tensors = [p]
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            tensors += [qs.absmax, qs.code]
            if qs.nested:
                tensors += [qs.offset, qs.state2.absmax, qs.state2.code]
        for extra in ("SCB", "CB"):
            if getattr(p, extra, None) is not None:
                tensors.append(getattr(p, extra))
        for t in tensors:
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            out[groups[name]] = out.get(groups[name], 0) + t.numel() * t.element_size()
    return out


def _load_tiny(quant: QuantSpec | None) -> Any:
    from sllm_lib.models.builders import load_base_model, resolve_model_path

    return load_base_model(resolve_model_path(TINY), model=TINY, quant=quant, dtype="float32")


def _rules(quant: QuantSpec, **train: Any) -> DtypeRules:
    stage = job("tiny:voxtral", {"quant": quant.model_dump(), "train": {"max_steps": 10, **train}}).stages[0]
    return DtypeRules.of(stage, "cpu")


@pytest.mark.parametrize("quant", [
    QuantSpec(),
    QuantSpec(bits=4),  # nf4, double quant, bf16 storage (the shipped default)
    QuantSpec(bits=4, quant_type="fp4", double_quant=False, storage_dtype="uint8"),
    QuantSpec(bits=8),
], ids=["fp32", "4bit-dq-bf16", "4bit-uint8", "8bit"])
def test_weight_bytes_by_group_equal_the_real_tensors(quant: QuantSpec) -> None:
    account = account_model(TINY)
    groups = {p.name: p.group for p in account.params}
    predicted = weight_bytes_by_group(account, _rules(quant))
    real = _real_group_bytes(_load_tiny(None if quant.bits == "none" else quant), groups)
    assert predicted == real
    assert set(predicted) == {"audio_encoder", "projector", "llm_embeddings", "llm_layers", "lm_head"}


def test_lora_and_trainable_counts_equal_a_real_peft_model() -> None:
    from sllm_lib.models.adapters import prepare_trainable

    quant = QuantSpec(bits=4)
    lora = LoraSpec(r=4, targets=ALL_TARGETS)
    model = prepare_trainable(_load_tiny(quant), lora=lora, trainable=["lora", "projector"],
                              gradient_checkpointing=False)
    real_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    real_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    spec = job("tiny:voxtral", {"kind": "multitask", "trainable": ["lora", "projector"], "lora": lora.model_dump(),
                                "quant": quant.model_dump()})
    [m] = plan_memory(spec, CPU1)
    assert lora_numel(account_model(TINY), lora) == real_lora == 2 * 4 * (4 * 64 + 3 * (64 + 128) + 2 * (64 + 32))
    assert m.params_trainable == real_trainable
    assert m.row("LoRA adapters").bytes == real_lora * 4  # PEFT keeps adapters in fp32


def test_gradient_and_optimizer_bytes_equal_a_real_training_step() -> None:
    import torch

    from sllm_lib.models.adapters import prepare_trainable

    torch.manual_seed(0)
    lora = LoraSpec(r=4, targets=["q_proj", "v_proj"])
    model = prepare_trainable(_load_tiny(None), lora=lora, trainable=["lora", "projector"],
                              gradient_checkpointing=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(10, 1000, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    # the projector gets no gradient from a text batch: give it one, as an audio batch would
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params)
    opt.step()
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")
    spec = job("tiny:voxtral", {"kind": "multitask", "trainable": ["lora", "projector"], "lora": lora.model_dump(),
                                "train": {"max_steps": 10, "precision": "fp32"}})
    [m] = plan_memory(spec, CPU1)
    assert m.row("gradients").bytes == grad_bytes
    assert m.row("optimizer: AdamW states").bytes == state_bytes == 2 * grad_bytes
    with pytest.raises(KeyError):
        m.row("DDP gradient buckets")  # one process: no DDP
    [m2] = plan_memory(spec, LocalProfile(kind="local", nproc=2))
    assert m2.row("DDP gradient buckets").bytes == grad_bytes


# ------------------------------------------------------------------------------------------ arithmetic


def test_quantized_bytes_arithmetic() -> None:
    # 4096 x 4096 nf4: 8 MiB packed; 262144 blocks -> 262144 uint8 absmax + 1024 fp32 absmax2 + offset + codes
    assert quant4_bytes(4096 * 4096, storage_itemsize=2, double_quant=True) == (
        8 * 2**20, 262144 + 1024 * 4 + 4 + 1024 + 64)
    assert quant4_bytes(4096 * 4096, storage_itemsize=1, double_quant=False) == (8 * 2**20, 262144 * 4 + 64)
    assert quant8_bytes(4096 * 1024, 1024) == (4096 * 1024, 4096)


@pytest.fixture(scope="module")
def voxtral() -> Any:
    return load_job_spec(VOXTRAL_SPEC)


def test_voxtral_mini_3b_parameter_count_and_lora(voxtral: Any) -> None:
    account = account_model(voxtral.model)
    assert account.source.startswith(("bundled snapshot", "HF cache"))
    assert account.numel == 4_676_271_104  # "Voxtral Mini 4.7B": Whisper-large-v3 encoder + projector + 3B LLM
    assert abs(account.numel / 4.7e9 - 1) < 0.01
    by = {g: sum(p.numel for p in account.params if p.group == g) for g in
          ("audio_encoder", "projector", "llm_embeddings", "llm_layers", "lm_head")}
    assert by["llm_embeddings"] == by["lm_head"] == 131072 * 3072  # untied
    assert by["projector"] == 5120 * 3072 + 3072 * 3072
    # stage 1: r=16 on all 7 projections of 30 layers: 16 * (in + out) summed
    per_layer = 16 * ((3072 + 4096) * 2 + (3072 + 1024) * 2 + (3072 + 8192) * 3)
    assert lora_numel(account, voxtral.stages[0].lora) == 30 * per_layer == 27_033_600


def test_voxtral_3stage_breakdown_on_a100_and_l4(voxtral: Any) -> None:
    a100 = load_cluster_profile(REPO / "cluster_configs" / "slurm_a100_2x8.yaml")
    l4 = load_cluster_profile(REPO / "cluster_configs" / "slurm_l4_1x4.yaml")
    big, small = plan_memory(voxtral, a100), plan_memory(voxtral, l4)
    assert [m.stage for m in big] == ["stage1_text_lora", "stage2_asr_projector", "stage3_multitask"]
    assert all(m.fits for m in big)
    s1 = big[0]
    assert s1.world_size == 16 and s1.available_bytes == 80 * GB
    # 4-bit LLM layers: 210 Linears of 3.2B weights at 1/2 byte + constants, norms in fp32
    assert 1.55 * GB < s1.row("weights: LLM layers").bytes < 1.75 * GB
    assert s1.row("weights: LLM embeddings").bytes == 131072 * 3072 * 4  # upcast by prepare_model_for_kbit_training
    assert s1.row("activations: logits + loss").bytes == 6 * 2048 * (131072 * 12 + (4 + 2) * 3072)
    assert s1.row("gradients").bytes == 27_033_600 * 4
    assert s1.row("optimizer: AdamW states").bytes == 27_033_600 * 8
    assert s1.total == sum(r.bytes for r in s1.rows)
    margin = s1.row("CUDA context + allocator margin").bytes
    assert margin == 10**9 + int(0.1 * (s1.total - margin))
    assert 20 * GB < s1.total < 60 * GB
    # the same stages on 24 GB L4s: stage 1 (micro-batch 6 x 2048 tokens, 131k vocab) does not fit
    assert small[0].fits is False and small[2].fits is True
    assert small[0].total == big[0].total  # plain DDP: every rank holds everything, whatever the world size


def test_llama_31_8b_from_the_bundled_snapshot(tmp_path: Path) -> None:
    base = "meta-llama/Llama-3.1-8B-Instruct"
    account = account_model(ModelSpec(base=base))
    assert account.numel == 8_030_261_248
    assert not account.multimodal and account.audio is None
    lin = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)  # quantized Linear weights
    emb = 128256 * 4096
    bf16_4bit = job(base, {"quant": {"bits": 4}, "deepspeed": {"stage": 2}})
    w = _weights(plan_memory(bf16_4bit, gpus(8))[0])
    assert abs(w - (lin / 2 + 2 * emb * 2)) < 0.15 * GB  # + norms and quantization constants
    assert 5.4 * GB < w < 5.8 * GB  # the usual "8B in 4-bit is ~5.5 GB" with 16-bit embeddings and head
    ddp_4bit = job(base, {"quant": {"bits": 4}})
    assert abs(_weights(plan_memory(ddp_4bit, gpus(8))[0]) - w - 2 * emb * 2) < 0.01 * GB  # fp32 after kbit prep
    bf16 = job(base, {})
    assert _weights(plan_memory(bf16, gpus(8))[0]) == 2 * 8_030_261_248


def _weights(m: StageMemory) -> int:
    return sum(r.bytes for r in m.rows if r.name.startswith("weights: "))


@pytest.mark.parametrize(("repo_id", "numel"), [
    ("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400),
    ("meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824),
    ("Qwen/Qwen2.5-3B-Instruct", 3_085_938_688),
    ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
])
def test_bundled_snapshots_give_the_published_sizes(repo_id: str, numel: int) -> None:
    assert bundled_config_path(repo_id).is_file()
    account = account_model(ModelSpec(base=repo_id))
    assert account.numel == numel
    tied = repo_id != "Qwen/Qwen2.5-7B-Instruct"
    assert account.lm_head_tied is tied


def test_full_llm_training_bf16_ddp_and_zero(tmp_path: Path) -> None:
    base = "meta-llama/Llama-3.2-1B-Instruct"
    n = 1_235_814_400
    ddp = plan_memory(job(base, {"trainable": ["llm"], "lora": None}), gpus(8))[0]
    assert ddp.params_trainable == n
    assert ddp.row("gradients").bytes == ddp.row("DDP gradient buckets").bytes == 2 * n  # bf16 params, bf16 grads
    assert ddp.row("optimizer: AdamW states").bytes == 4 * n  # torch AdamW keeps states in the params' dtype
    z = {k: plan_memory(job(base, {"trainable": ["llm"], "lora": None, "deepspeed": {"stage": k}}), gpus(8))[0]
         for k in (0, 1, 2, 3)}
    assert z[0].row("optimizer: AdamW states").bytes == 8 * n
    assert z[0].row("gradients: fp32 accumulation").bytes == 4 * n
    assert z[1].row("optimizer: AdamW states").bytes == math.ceil(8 * n / 8)
    assert z[1].row("optimizer: fp32 master weights").bytes == math.ceil(4 * n / 8)
    assert z[1].row("gradients").bytes == 2 * n
    assert z[2].row("gradients").bytes == math.ceil(2 * n / 8)
    assert _weights(z[2]) == 2 * n
    assert _weights(z[3]) <= math.ceil(2 * n / 8) + 3  # rounding per group
    assert z[3].row("ZeRO-3 gathered weights").bytes == 128256 * 2048 * 2  # the (tied) embedding is the largest
    assert z[3].row("ZeRO buckets").bytes == 2 * (2048**2 + int(0.9 * 2048**2))
    assert z[0].total > z[1].total > z[2].total > z[3].total
    off = plan_memory(job(base, {"trainable": ["llm"], "lora": None, "deepspeed": {
        "stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"}}), gpus(8))[0]
    assert _weights(off) == 0
    assert {r.name for r in off.cpu_rows} >= {"weights: LLM layers", "optimizer: AdamW states",
                                              "optimizer: fp32 master weights"}
    assert off.cpu_total >= math.ceil(12 * n / 8)
    assert off.total < z[3].total


def test_activation_terms_follow_the_formula() -> None:
    base = "meta-llama/Llama-3.2-1B-Instruct"
    h, inter, hq, hkv, L, V = 2048, 8192, 2048, 512, 16, 128256
    full = plan_memory(job(base, {"lora": {"r": 8, "dropout": 0.0},
                                  "train": {"max_steps": 1, "per_device_bsz": 2, "max_seq_len": 512}}), gpus(1))[0]
    per_layer = 2 * 2 * h + 2 * 2 * h + 2 * (hq + 2 * hkv) + 2 * hq + 4 * 2 * inter  # bf16, bf16 residual
    assert full.row("activations: LLM layers").bytes == 1024 * L * per_layer
    assert full.row("activations: logits + loss").bytes == 1024 * (V * 12 + 4 * h)
    ckpt = plan_memory(job(base, {"lora": {"r": 8, "dropout": 0.0}, "train": {
        "max_steps": 1, "per_device_bsz": 2, "max_seq_len": 512, "gradient_checkpointing": True}}), gpus(1))[0]
    assert ckpt.row("activations: LLM layers").bytes == 1024 * (L * 2 * h + per_layer + 2 * 2 * h)
    drop = plan_memory(job(base, {"lora": {"r": 8, "dropout": 0.1, "targets": ["q_proj"]},
                                  "train": {"max_steps": 1, "per_device_bsz": 2, "max_seq_len": 512}}), gpus(1))[0]
    assert drop.row("activations: LoRA").bytes == 1024 * L * ((1 + 2) * h + 2 * 8)


def test_audio_stage_counts_chunks_and_projector(voxtral: Any) -> None:
    m = plan_memory(voxtral, gpus(8, 80))[1]  # stage 2: ASR, micro-batch 8, seq 1024 -> 2 chunks per example
    assert m.row("activations: projector").bytes == 8 * 2 * 375 * 2 * (5120 + 2 * 3072)
    assert "frozen forward, 16 chunks" in m.row("activations: audio encoder").note
    assert any("2 x 30 s chunks" in n for n in m.notes)


def test_mini_voxtral_plans_its_6_s_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mini:voxtral's chunks are 6 s (600 mel frames, 300 encoder positions, 75 tokens): the planner reads that
    from the config (nothing built or fetched), not Voxtral's 30 s."""
    monkeypatch.setenv("SLLM_HOME", str(tmp_path))
    monkeypatch.setenv("SLLM_WHEELS", str(tmp_path / "no-wheels"))
    spec = load_job_spec(REPO / "jobs" / "demo_sllm_mini.yaml")
    m = next(s for s in plan_memory(spec, gpus(1, 24)) if s.stage == "asr_projector")
    chunks = 256 // 75 * 8  # max_seq_len 256 holds 3 chunks, micro-batch 8
    assert m.row("activations: projector").bytes == chunks * 75 * 4 * (2048 + 2 * 576)  # fp32
    assert f"frozen forward, {chunks} chunks x 300 frames" in m.row("activations: audio encoder").note
    assert any("3 x 6 s chunks per example (75 tokens each" in n for n in m.notes), m.notes
    assert not (tmp_path / "no-wheels").exists()


# ------------------------------------------------------------------------------------------ suggestions


def test_suggestion_fits_and_keeps_the_global_batch(voxtral: Any) -> None:
    l4 = load_cluster_profile(REPO / "cluster_configs" / "slurm_l4_1x4.yaml")
    s1 = plan_memory(voxtral, l4)[0]
    fix = suggest(voxtral, l4, s1)
    assert fix is not None and fix.memory.fits
    t = voxtral.stages[0].train
    if "train.per_device_bsz" in fix.changes:
        assert fix.changes["train.per_device_bsz"] * fix.changes["train.grad_accum"] == t.per_device_bsz * t.grad_accum
    # the --set strings are what the CLI takes, and they give the predicted plan
    fixed = load_job_spec(VOXTRAL_SPEC, fix.set_args)
    again = plan_memory(fixed, l4)[0]
    assert again.fits and again.total == fix.memory.total
    assert suggest(voxtral, l4, again) is None  # fits already: nothing to suggest


def test_suggestion_prefers_cheap_changes() -> None:
    base = "meta-llama/Llama-3.1-8B-Instruct"
    spec = job(base, {"trainable": ["llm"], "lora": None,
                      "train": {"max_steps": 1, "per_device_bsz": 1, "max_seq_len": 1024}})
    m = plan_memory(spec, gpus(8, 80))[0]
    assert m.fits is False  # 8B full bf16 DDP: 16 GB weights + 16 grads + 16 buckets + 32 AdamW
    fix = suggest(spec, gpus(8, 80), m)
    assert fix is not None and fix.changes == {"deepspeed.stage": 2}
    none = suggest(spec, gpus(1, 1), plan_memory(spec, gpus(1, 1))[0])
    assert none is None  # nothing makes an 8B model fit 1 GB


def test_stage_variant_validates() -> None:
    stage = job("meta-llama/Llama-3.2-1B-Instruct", {"quant": {"bits": 8}}).stages[0]
    assert stage_variant(stage, {"deepspeed.stage": 2}).deepspeed.stage == 2
    with pytest.raises(JobSpecError):
        stage_variant(stage, {"deepspeed.stage": 3})  # 8-bit cannot be partitioned by ZeRO-3


# ------------------------------------------------------------------------------------------ config resolution


def test_unknown_hub_model_says_what_to_do() -> None:
    with pytest.raises(ArtifactNotFoundError) as info:
        load_model_config(ModelSpec(base="nobody/no-such-model"))
    msg = str(info.value)
    assert "'nobody/no-such-model'" in msg and "local folder" in msg and "meta-llama/Llama-3.1-8B-Instruct" in msg


def test_local_folder_and_tiny_presets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny preset"):  # the spec refuses it first
        ModelSpec(base="tiny:nope")
    with pytest.raises(JobSpecError, match="unknown tiny preset"):  # and the loader still does (unvalidated input)
        load_model_config(ModelSpec.model_construct(base="tiny:nope", revision=None, audio_token_id=None,
                                                    trust_remote_code=False))
    with pytest.raises(ArtifactNotFoundError, match="no config.json"):
        load_model_config(ModelSpec(base=str(tmp_path)))
    (tmp_path / "config.json").write_text(bundled_config_path("meta-llama/Llama-3.2-1B-Instruct").read_text())
    config, source = load_model_config(ModelSpec(base=str(tmp_path)))
    assert config.hidden_size == 2048 and source == str(tmp_path)


def test_tiny_preset_config_matches_the_materialized_model() -> None:
    import json

    from sllm_lib.models.builders import resolve_model_path

    config, _ = load_model_config(TINY)
    saved = json.loads((Path(resolve_model_path(TINY)) / "config.json").read_text())
    assert config.text_config.vocab_size == saved["text_config"]["vocab_size"]
    assert config.audio_token_id == saved["audio_token_id"]


# ------------------------------------------------------------------------------------------ every shipped spec

JOB_SPECS = sorted((REPO / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("spec_path", JOB_SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_plans_its_memory(spec_path: Path) -> None:
    """`sllm plan --memory` for every spec in jobs/: a new spec naming a model without a config snapshot (or an
    architecture the planner does not model) fails here."""
    spec = load_job_spec(spec_path)
    profile = load_cluster_profile(REPO / "cluster_configs" / "slurm_a100_2x8.yaml")
    plans = plan_memory(spec, profile)
    assert [m.stage for m in plans] == [s.name for s in spec.stages if s.trains]
    for m in plans:
        assert m.params_total > 0 and m.total > m.params_total  # at least a byte per weight, plus the rest
        assert m.fits is not None


@pytest.mark.parametrize(("repo_id", "numel", "tied"), [
    ("LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct", 7_818_448_896, False),
    ("LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", 2_405_327_360, True),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1_777_088_000, False),
    ("microsoft/Phi-3.5-vision-instruct", 4_146_613_248, False),
])
def test_shipped_real_models_give_the_published_sizes(repo_id: str, numel: int, tied: bool) -> None:
    account = account_model(ModelSpec(base=repo_id, trust_remote_code=True))  # Phi3V: less its 2 x 4096 separators
    assert account.numel == numel  # 7.82B, 2.41B, 1.78B, 4.15B as published
    assert account.lm_head_tied is tied


def test_exaone_lora_targets_use_exaones_own_linear_names() -> None:
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc_0", "c_fc_1", "c_proj"]
    account = account_model(ModelSpec(base="LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct", trust_remote_code=True))
    per_layer = 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))
    assert lora_numel(account, LoraSpec(r=16, targets=targets)) == 32 * per_layer
    assert lora_numel(account, LoraSpec(r=16, targets=["o_proj", "gate_proj"])) == 0  # Llama's names are not EXAONE's


def test_phi35_vision_tower_is_frozen_bf16_and_lora_on_the_text_model() -> None:
    spec = load_job_spec(REPO / "jobs" / "aac_vlm_phi35.yaml")
    m = plan_memory(spec, gpus(1, 80))[0]
    assert m.row("weights: vision encoder").bytes == 2 * 303_507_456  # CLIP ViT-L/14-336 vision model, bf16
    assert m.row("weights: projector").bytes == 2 * (4096 * 3072 + 3072 + 3072 * 3072 + 3072)
    assert m.params_trainable == 32 * 16 * ((3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072))
    assert "activations: vision encoder" in [r.name for r in m.rows]
    assert any("781 tokens each" in n and "5 crop(s) of 577 patches" in n for n in m.notes)
    trained = plan_memory(spec.model_copy(update={"stages": [spec.stages[0].model_copy(
        update={"trainable": ["lora", "projector"]})]}), gpus(1, 80))[0]
    tokens = 2 * 781 * 4  # images per example x tokens per image x micro-batch
    assert trained.row("activations: projector").bytes == tokens * 2 * (4096 + 2 * 3072)


def test_unmodelled_vision_architecture_is_refused_by_name(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "idefics3", "vision_config": {"hidden_size": 64, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "intermediate_size": 128},
        "text_config": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 128, "vocab_size": 100}}))
    spec = parse_job_spec({"name": "v", "model": {"base": str(tmp_path)}, "stages": [
        {"name": "s", "kind": "vision_sft", "lora": {"r": 8},
         "data": {"train": [{"kind": "vision", "path": str(SAMPLE / "aac" / "aac_train.jsonl")}]},
         "train": {"max_steps": 1}}]}, source="<test>", base_dir=tmp_path)
    with pytest.raises(JobSpecError, match=r"'idefics3' is not modelled.*--force"):
        plan_memory(spec, gpus(1, 80))


def test_distill_counts_a_teacher_it_can_resolve_and_says_when_it_cannot() -> None:
    """A folder/preset/hub teacher: its frozen weights (a whole copy per rank) and its logits are rows of the plan;
    a registry teacher (resolved at run time) is named as not counted, in the notes and beside the verdict."""
    distill = {"kind": "distill", "trainable": ["llm"], "lora": None, "teacher": "tiny:llama",
               "train": {"max_steps": 10, "per_device_bsz": 4, "max_seq_len": 128}}
    (m,) = plan_memory(job("tiny:llama-half", distill), gpus(2, 24.0))
    teacher = account_model(ModelSpec(base="tiny:llama"))
    rules = DtypeRules.of(parse_job_spec({"name": "x", "model": {"base": "tiny:llama-half"}, "stages": [
        {"name": "s", **distill, "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]}}
    ]}, source="<t>", base_dir=REPO).stages[0], "gpu")
    assert m.row("teacher: weights (frozen)").bytes == teacher.numel * rules.float_param
    assert m.row("teacher: logits").bytes == 4 * 128 * teacher.text["vocab"] * 8
    assert m.uncounted is None and not any("teacher" in n for n in m.notes)

    (r,) = plan_memory(job("tiny:llama-half", {**distill, "teacher": "medqa-tiny@candidate"}), gpus(2, 24.0))
    assert r.uncounted == "teacher medqa-tiny@candidate"
    assert any("NOT counted" in n for n in r.notes)
    assert not any(row.name.startswith("teacher") for row in r.rows)
    def counted(x: StageMemory) -> int:
        return sum(row.bytes for row in x.rows if "margin" not in row.name)  # the margin is a share of the rest

    assert counted(r) == counted(m) - m.row("teacher: weights (frozen)").bytes - m.row("teacher: logits").bytes
