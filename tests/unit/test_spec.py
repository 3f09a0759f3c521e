"""Tests for sllm_lib.spec: strict loading, error messages, overrides, hashing, graph checks, cluster profiles."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from sllm_lib.errors import JobSpecError, SllmError
from sllm_lib.spec import (
    JobSpec,
    LocalProfile,
    RayProfile,
    SlurmProfile,
    apply_overrides,
    dump_resolved_yaml,
    find_cluster_profile,
    json_schema,
    load_cluster_profile,
    load_job_spec,
    parse_job_spec,
    spec_hash,
    topo_order,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "jobs" / "demo_sllm_tiny.yaml"
SAMPLE = REPO / "data" / "sample"


# ------------------------------------------------------------------------------------------ helpers


def minimal_raw() -> dict[str, Any]:
    """A small valid spec (sft -> asr -> merge -> eval) pointing at the shipped sample data."""
    return {
        "name": "t",
        "model": {"base": "tiny:voxtral"},
        "stages": [
            {
                "name": "sft",
                "kind": "text_sft",
                "data": {"train": [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_train.jsonl")}]},
                "train": {"max_steps": 4, "lr": 1e-3},
                "lora": {"r": 4, "alpha": 8},
                "trainable": ["lora"],
            },
            {
                "name": "asr",
                "kind": "asr_adapter",
                "from_stage": "sft",
                "data": {"train": [{"kind": "asr", "path": str(SAMPLE / "asr_train.jsonl")}]},
                "train": {"max_steps": 4},
            },
            {"name": "merge", "kind": "merge", "from_stage": "asr"},
            {
                "name": "eval",
                "kind": "eval",
                "from_stage": "merge",
                "datasets": [{"kind": "asr", "path": str(SAMPLE / "asr_val.jsonl")}],
            },
        ],
    }


def write_spec(tmp_path: Path, raw: Any, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def spec_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(JobSpecError) as info:
        load_job_spec(path, overrides)
    return str(info.value)


def problem_lines(message: str) -> list[str]:
    """The indented problem lines of a JobSpecError message (without the header)."""
    return [line.strip() for line in message.splitlines()[1:]]


def mutated(tmp_path: Path, mutate) -> Path:
    raw = minimal_raw()
    mutate(raw)
    return write_spec(tmp_path, raw)


# ------------------------------------------------------------------------------------------ loading


def test_demo_spec_loads_with_typed_stages() -> None:
    spec = load_job_spec(DEMO)
    assert isinstance(spec, JobSpec)
    assert spec.name == "demo-sllm-tiny"
    assert [s.name for s in spec.stages] == ["text_lora", "asr_projector", "multitask", "merge", "eval"]
    assert [s.kind for s in spec.stages] == ["text_sft", "asr_adapter", "multitask", "merge", "eval"]
    assert spec.stage("multitask").from_stage == "asr_projector"
    assert spec.stage("text_lora").train.lr == pytest.approx(1e-2)
    # relative dataset paths ("../data/sample/...") are made absolute against the spec's folder
    for ref in spec.stage("multitask").data.train:
        assert Path(ref.path).is_absolute()
        assert Path(ref.path).is_file()
        assert Path(ref.path).parent == SAMPLE
    with pytest.raises(KeyError):
        spec.stage("no_such_stage")


def test_minimal_spec_loads_and_fills_defaults(tmp_path: Path) -> None:
    spec = load_job_spec(write_spec(tmp_path, minimal_raw()))
    assert spec.cluster == "local"
    assert spec.output_dir == "runs"
    assert spec.stage("asr").trainable == ["projector"]  # asr_adapter default
    assert spec.stage("asr").lora is None
    assert spec.stage("sft").quant.bits == "none"
    assert spec.stage("merge").dtype == "bfloat16"
    assert spec.stage("eval").generation.max_new_tokens == 64


def test_spec_is_frozen() -> None:
    spec = load_job_spec(DEMO)
    with pytest.raises(ValidationError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        spec.stages[0].train.lr = 0.5  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        spec.model.base = "x"  # type: ignore[misc]
    assert spec.stages[0].train.lr == pytest.approx(1e-2)


def test_relative_dataset_path_resolves_against_spec_folder_not_cwd(tmp_path: Path, monkeypatch) -> None:
    raw = minimal_raw()
    raw["stages"][0]["data"]["train"][0]["path"] = "../data/train.jsonl"
    raw["stages"][3]["datasets"][0]["path"] = "val.jsonl"
    path = write_spec(tmp_path, raw, name="jobs/spec.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_job_spec(path)
    assert spec.stage("sft").data.train[0].path == str((tmp_path / "data" / "train.jsonl").resolve())
    assert spec.stage("eval").datasets[0].path == str((tmp_path / "jobs" / "val.jsonl").resolve())


def test_relative_model_base_resolves_but_tiny_and_hub_ids_do_not(tmp_path: Path) -> None:
    raw = minimal_raw()
    raw["model"]["base"] = "./models/base"
    spec = load_job_spec(write_spec(tmp_path, raw))
    assert spec.model.base == str((tmp_path / "models" / "base").resolve())
    for base in ("tiny:voxtral", "mistralai/Voxtral-Mini-3B-2507"):
        raw["model"]["base"] = base
        assert load_job_spec(write_spec(tmp_path, raw)).model.base == base


# ------------------------------------------------------------------------------------------ unknown keys


def test_unknown_top_level_key_names_key_and_hints(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r.update(nme="x"))
    msg = spec_error(path)
    assert problem_lines(msg) == ["nme: unknown key; did you mean 'name'?"]


@pytest.mark.parametrize("typo", ["lr_warmup", "warmup_step"])
def test_unknown_nested_key_gives_dotted_path_and_did_you_mean(tmp_path: Path, typo: str) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update({typo: 2}))
    msg = spec_error(path)
    assert f"stages[0].train.{typo}" in msg
    assert "unknown key" in msg
    assert problem_lines(msg) == [f"stages[0].train.{typo}: unknown key; did you mean 'warmup_steps'?"]


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update(zzqqxx=1))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages[0].train.zzqqxx: unknown key; allowed keys: ")
    allowed = line.split("allowed keys: ", 1)[1].split(", ")
    assert {"lr", "warmup_steps", "max_steps", "per_device_bsz"} <= set(allowed)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["stages"][0]["data"]["train"][0].update(pth="x"),
         "stages[0].data.train[0].pth: unknown key; did you mean 'path'?"),
        (lambda r: r["stages"][2].update(dtyp="float32"), "stages[2].dtyp: unknown key; did you mean 'dtype'?"),
        (lambda r: r["stages"][3]["datasets"][0].update(metric=["cer"]),
         "stages[3].datasets[0].metric: unknown key; did you mean 'metrics'?"),
        (lambda r: r["model"].update(revison="main"), "model.revison: unknown key; did you mean 'revision'?"),
        (lambda r: r["stages"][0]["lora"].update(rank=8), "stages[0].lora.rank: unknown key; did you mean 'r'?"),
        (lambda r: r["stages"][0]["lora"].update(size=8),
         "stages[0].lora.size: unknown key; allowed keys: r, alpha, dropout, targets"),
        (lambda r: r["stages"][0]["train"].update(learning_rate=1e-4),
         "stages[0].train.learning_rate: unknown key; did you mean 'lr'?"),  # difflib alone: 'logging_steps'
        (lambda r: r["stages"][0]["train"].update(gradient_accumulation_steps=4),
         "stages[0].train.gradient_accumulation_steps: unknown key; did you mean 'grad_accum'?"),
    ],
    ids=["dataset-ref", "merge-stage", "eval-dataset", "model", "lora-synonym", "lora", "lr-synonym", "accum-synonym"],
)
def test_unknown_key_in_nested_models_hides_union_tag(tmp_path: Path, mutate, expected: str) -> None:
    # the discriminator tag (text_sft/merge/eval) is not part of the user-facing dotted path
    msg = spec_error(mutated(tmp_path, mutate))
    assert problem_lines(msg) == [expected]


def test_unknown_top_level_key_named_like_a_stage_kind_is_named(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r.update(eval={"datasets": []}))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("eval: unknown key")


# ------------------------------------------------------------------------------------------ values


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update(lr="abc"))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages[0].train.lr: ")
    assert "valid number" in line
    assert line.endswith("(got 'abc')")


def test_negative_lr(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update(lr=-1))
    msg = spec_error(path)
    assert "stages[0].train.lr" in msg
    assert "greater than 0" in msg
    assert "(got -1" in msg


def test_lr_upper_bound(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update(lr=1.5))
    (line,) = problem_lines(spec_error(path))
    assert line == "stages[0].train.lr: Input should be less than 1 (got 1.5)"


def test_bad_literal_lists_allowed_values(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update(precision="bf32"))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages[0].train.precision: ")
    assert "'fp32'" in line and "'bf16'" in line and "'fp16'" in line
    assert "(got 'bf32')" in line


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    def mutate(r: dict[str, Any]) -> None:
        r["stages"][0]["train"]["lr"] = -1
        r["stages"][1]["train"]["per_device_bsz"] = "x"
        r["bogus"] = 1

    path = mutated(tmp_path, mutate)
    msg = spec_error(path)
    header, *rest = msg.splitlines()
    assert header == f"{path}: 3 problems"
    assert all(line.startswith("  ") for line in rest)
    lines = problem_lines(msg)
    assert len(lines) == 3
    assert "stages[0].train.lr: Input should be greater than 0 (got -1)" in lines
    assert any(line.startswith("stages[1].train.per_device_bsz: ") and "(got 'x')" in line for line in lines)
    assert any(line.startswith("bogus: unknown key; allowed keys: name, description") for line in lines)


def test_header_starts_with_file_path_and_singular_problem(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update(lr=-1))
    msg = spec_error(path)
    assert msg.startswith(str(path))
    assert msg.splitlines()[0] == f"{path}: 1 problem"


def test_missing_required_fields(tmp_path: Path) -> None:
    raw = minimal_raw()
    raw["stages"][0]["data"].pop("train")
    lines = problem_lines(spec_error(write_spec(tmp_path, raw)))
    assert "stages[0].data.train: Field required" in lines
    raw = minimal_raw()
    del raw["model"]
    (line,) = problem_lines(spec_error(write_spec(tmp_path, raw)))
    assert line.startswith("model: required by stage(s)")  # only training/merge/eval stages need a base model


def test_empty_stage_list(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r.update(stages=[]))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages: List should have at least 1 item")


def test_unknown_stage_kind_lists_expected_tags(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][2].update(kind="mrge"))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages[2].kind: unknown kind 'mrge'; did you mean 'merge'? (one of: ")
    for tag in ("text_sft", "asr_adapter", "multitask", "merge", "eval"):
        assert f" {tag}," in line or f" {tag})" in line


def test_misspelt_kind_key_is_named(tmp_path: Path) -> None:
    stage = lambda r: r["stages"][2]  # noqa: E731
    path = mutated(tmp_path, lambda r: stage(r).update(KIND=stage(r).pop("kind")))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages[2]: 'kind' is required (one of: text_sft, ")
    assert line.endswith("; found 'KIND', did you mean 'kind'?")


def test_bad_stage_name(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][2].update(name="my merge"))
    msg = spec_error(path)
    assert "stages[2].name: String should match pattern" in msg
    assert "(got 'my merge')" in msg


def test_duplicate_stage_names(tmp_path: Path) -> None:
    def mutate(r: dict[str, Any]) -> None:
        r["stages"][1]["name"] = "sft"
        r["stages"][1]["from_stage"] = None
        r["stages"][2]["from_stage"] = "sft"

    msg = spec_error(mutated(tmp_path, mutate))
    assert "duplicate stage name 'sft'" in msg


def test_training_length_required(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].pop("max_steps"))
    assert problem_lines(spec_error(path)) == ["stages[0].train: set epochs or max_steps"]
    # epochs alone is fine
    raw = minimal_raw()
    raw["stages"][0]["train"] = {"epochs": 1}
    assert load_job_spec(write_spec(tmp_path, raw, "ok.yaml")).stages[0].train.epochs == 1


def test_warmup_must_be_shorter_than_max_steps(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0]["train"].update(warmup_steps=4))
    assert problem_lines(spec_error(path)) == ["stages[0].train: warmup_steps (4) must be < max_steps (4)"]


def test_eval_at_start_needs_val_data(tmp_path: Path) -> None:
    def no_val(r: dict) -> None:
        r["stages"][0]["train"]["eval_at_start"] = True
        r["stages"][0]["data"].pop("val", None)

    assert problem_lines(spec_error(mutated(tmp_path, no_val))) == [
        "stages[0]: train.eval_at_start scores the val data before the first step, and data.val is empty"]


# ------------------------------------------------------------------------------------------ stage consistency


def test_trainable_lora_without_lora_block(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][1].update(trainable=["projector", "lora"]))
    assert problem_lines(spec_error(path)) == ["stages[1]: trainable contains 'lora' but the stage has no lora block"]


def test_lora_block_without_trainable_lora(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0].update(trainable=["projector"]))
    assert problem_lines(spec_error(path)) == ["stages[0]: a lora block is set but 'lora' is not in trainable"]


def test_full_training_on_quantized_base_rejected(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0].update(quant={"bits": 4}, trainable=["lora", "llm"]))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages[0]: full 'llm'/'audio_encoder' training cannot run on a quantized base")


def test_unknown_trainable_group(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][1].update(trainable=["projektor"]))
    (line,) = problem_lines(spec_error(path))
    assert line.startswith("stages[1].trainable[0]: ")
    assert "(got 'projektor')" in line


def test_text_sft_rejects_non_text_datasets(tmp_path: Path) -> None:
    def mutate(r: dict[str, Any]) -> None:
        r["stages"][0]["data"]["train"][0] = {"kind": "asr", "path": str(SAMPLE / "asr_train.jsonl")}

    (line,) = problem_lines(spec_error(mutated(tmp_path, mutate)))
    assert line.startswith("stages[0].data: text_sft takes text_qa datasets only (got 'asr'")


def test_asr_adapter_rejects_non_asr_datasets(tmp_path: Path) -> None:
    def mutate(r: dict[str, Any]) -> None:
        r["stages"][1]["data"]["val"] = [{"kind": "text_qa", "path": str(SAMPLE / "text_qa_val.jsonl")}]

    (line,) = problem_lines(spec_error(mutated(tmp_path, mutate)))
    assert line.startswith("stages[1].data: asr_adapter takes asr datasets only (got 'text_qa'")


def test_merge_without_from_stage(tmp_path: Path) -> None:
    def mutate(r: dict[str, Any]) -> None:
        del r["stages"][2]["from_stage"]
        r["stages"][2]["depends_on"] = ["asr"]

    assert problem_lines(spec_error(mutated(tmp_path, mutate))) == [
        "stages[2]: merge needs from_stage (the last training stage)"
    ]


def test_eval_without_from_stage(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][3].pop("from_stage"))
    assert problem_lines(spec_error(path)) == ["stages[3]: eval needs from_stage (a merge or training stage)"]


# ------------------------------------------------------------------------------------------ graph


def test_from_stage_typo_is_unknown_stage_with_hint(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][1].update(from_stage="sfft"))
    msg = spec_error(path)
    assert "unknown stage" in msg
    assert problem_lines(msg) == ["stages[1].from_stage: unknown stage 'sfft'; did you mean 'sft'?"]


def test_unknown_depends_on_without_close_match_lists_stages(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][3].update(depends_on=["zzzz"]))
    assert problem_lines(spec_error(path)) == [
        "stages[3].depends_on: unknown stage 'zzzz'; stages are: sft, asr, merge, eval"
    ]


def test_dependency_cycle_via_from_stage(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][0].update(from_stage="asr"))
    msg = spec_error(path)
    assert "dependency cycle" in msg
    assert problem_lines(msg) == ["stages: dependency cycle: sft needs asr needs sft"]


def test_dependency_cycle_via_depends_on(tmp_path: Path) -> None:
    path = mutated(tmp_path, lambda r: r["stages"][2].update(depends_on=["eval"]))
    msg = spec_error(path)
    assert "dependency cycle" in msg
    (line,) = problem_lines(msg)
    assert re.fullmatch(r"stages: dependency cycle: (merge needs eval needs merge|eval needs merge needs eval)", line)


@pytest.mark.parametrize("field", ["from_stage", "depends_on"])
def test_self_dependency(tmp_path: Path, field: str) -> None:
    value: Any = "asr" if field == "from_stage" else ["asr"]
    path = mutated(tmp_path, lambda r: r["stages"][1].update({field: value}))
    lines = problem_lines(spec_error(path))
    assert f"stages[1].{field}: stage 'asr' depends on itself" in lines


def test_eval_stage_cannot_feed_a_model(tmp_path: Path) -> None:
    def mutate(r: dict[str, Any]) -> None:
        r["stages"].append({"name": "eval2", "kind": "eval", "from_stage": "eval",
                            "datasets": [{"kind": "asr", "path": str(SAMPLE / "asr_val.jsonl")}]})

    assert problem_lines(spec_error(mutated(tmp_path, mutate))) == [
        "stages[4].from_stage: 'eval' is an eval stage and produces no model"
    ]


def test_training_from_merged_model_rejected(tmp_path: Path) -> None:
    def mutate(r: dict[str, Any]) -> None:
        r["stages"].append({"name": "more", "kind": "asr_adapter", "from_stage": "merge",
                            "data": {"train": [{"kind": "asr", "path": str(SAMPLE / "asr_train.jsonl")}]},
                            "train": {"max_steps": 2}})

    (line,) = problem_lines(spec_error(mutated(tmp_path, mutate)))
    assert line.startswith("stages[4].from_stage: training from a merged model is not supported")
    assert "'merge'" in line


def test_topo_order_demo() -> None:
    assert topo_order(load_job_spec(DEMO)) == ["text_lora", "asr_projector", "multitask", "merge", "eval"]


def test_topo_order_respects_dependencies_not_file_order(tmp_path: Path) -> None:
    raw = minimal_raw()
    raw["stages"] = list(reversed(raw["stages"]))  # eval, merge, asr, sft
    order = topo_order(load_job_spec(write_spec(tmp_path, raw)))
    assert order == ["sft", "asr", "merge", "eval"]


def test_topo_order_honours_depends_on_and_keeps_file_order_otherwise(tmp_path: Path) -> None:
    raw = minimal_raw()
    sft2 = copy.deepcopy(raw["stages"][0])
    sft2["name"] = "sft2"
    # eval2 listed first, waits for merge only via depends_on; sft2 is independent
    eval2 = copy.deepcopy(raw["stages"][3])
    eval2.update(name="eval2", from_stage="sft2", depends_on=["merge"])
    raw["stages"] = [eval2, *raw["stages"], sft2]
    spec = load_job_spec(write_spec(tmp_path, raw))
    order = topo_order(spec)
    assert sorted(order) == sorted(s.name for s in spec.stages)
    for s in spec.stages:
        for up in s.upstream():
            assert order.index(up) < order.index(s.name), (up, s.name, order)
    assert order.index("sft") < order.index("sft2")  # independent roots keep file order
    assert spec.stage("eval2").upstream() == ["sft2", "merge"]


# ------------------------------------------------------------------------------------------ file problems


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    msg = spec_error(path)
    assert msg.startswith(f"{path}: not valid YAML")
    assert re.search(r"at line \d+, column \d+", msg)


def test_not_yaml_reports_the_offending_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  base: a\n bad: 1\n", encoding="utf-8")
    assert "not valid YAML at line 4" in spec_error(path)


@pytest.mark.parametrize(("text", "typename"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("", "NoneType")])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str, typename: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    msg = spec_error(path)
    assert msg.splitlines()[0] == f"{path}: 1 problem"
    assert problem_lines(msg) == [f"<root>: expected a mapping of job fields (got {typename})"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert spec_error(path) == f"{path}: file not found"


def test_directory_is_not_a_spec(tmp_path: Path) -> None:
    assert spec_error(tmp_path) == f"{tmp_path}: file not found"


def test_job_spec_error_is_an_sllm_error() -> None:
    assert issubclass(JobSpecError, SllmError)


# ------------------------------------------------------------------------------------------ overrides


def test_override_by_index() -> None:
    spec = load_job_spec(DEMO, ["stages[1].train.lr=0.5"])
    assert spec.stages[1].train.lr == pytest.approx(0.5)
    assert spec.stages[0].train.lr == pytest.approx(1e-2)


def test_override_by_stage_name() -> None:
    spec = load_job_spec(DEMO, ["stages.asr_projector.train.lr=1e-4", "stages.eval.generation.batch_size=2"])
    assert spec.stage("asr_projector").train.lr == pytest.approx(1e-4)
    assert spec.stage("eval").generation.batch_size == 2


def test_override_values_are_parsed_as_yaml() -> None:
    spec = load_job_spec(DEMO, [
        "stages[0].lora.targets=[q_proj, v_proj]",
        "stages[0].train.gradient_checkpointing=true",
        "stages[0].train.max_steps=12",
        "stages[0].train.epochs=null",
        "description=a=b",
        "tracking.uri=sqlite:///x.db",
    ])
    s0 = spec.stages[0]
    assert s0.lora.targets == ["q_proj", "v_proj"]
    assert s0.train.gradient_checkpointing is True
    assert s0.train.max_steps == 12
    assert s0.train.epochs is None
    assert spec.description == "a=b"  # only the first '=' separates key and value
    assert spec.tracking.uri == "sqlite:///x.db"


def test_override_raw_values() -> None:
    raw = {"a": {"b": 1}, "items": [{"name": "x", "v": 1}, {"name": "y", "v": 2}]}
    out = apply_overrides(raw, ["a.b=2", "items.y.v=[1, 2]", "items[0].v='007'", "a.new.deep=yes", "a.empty="])
    assert out == {"a": {"b": 2, "new": {"deep": True}, "empty": ""},
                   "items": [{"name": "x", "v": "007"}, {"name": "y", "v": [1, 2]}]}
    assert raw == {"a": {"b": 1}, "items": [{"name": "x", "v": 1}, {"name": "y", "v": 2}]}  # input untouched


def test_override_creates_missing_blocks() -> None:
    spec = load_job_spec(DEMO, ["cache.dir=/tmp/feature-cache"])
    assert spec.cache.dir == "/tmp/feature-cache"


@pytest.mark.parametrize("item", ["stages[0].train.lr", "=3", "1abc=2", ""])
def test_override_bad_syntax(item: str) -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_spec(DEMO, [item])
    assert str(info.value) == f"--set {item!r}: expected KEY=VALUE, e.g. stages[0].train.lr=2e-4"


def test_override_index_out_of_range() -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_spec(DEMO, ["stages[9].train.lr=1e-4"])
    assert str(info.value) == "--set 'stages[9].train.lr=1e-4': index 9 out of range (list has 5 items)"


def test_override_unknown_stage_name() -> None:
    with pytest.raises(JobSpecError, match=r"no list element named 'nope'"):
        load_job_spec(DEMO, ["stages.nope.train.lr=1e-4"])


def test_override_into_a_scalar() -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_spec(DEMO, ["name.x=1"])
    assert str(info.value) == "--set 'name.x=1': name is not a mapping"


def test_override_value_is_validated_like_the_file() -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_spec(DEMO, ["stages[0].train.lr=-1", "stages[0].train.lr_warmup=3"])
    msg = str(info.value)
    assert msg.splitlines()[0] == f"{DEMO}: 2 problems"
    assert "stages[0].train.lr: Input should be greater than 0 (got -1)" in msg
    assert "stages[0].train.lr_warmup: unknown key; did you mean 'warmup_steps'?" in msg


# ------------------------------------------------------------------------------------------ hash


def test_spec_hash_is_stable_across_loads() -> None:
    h = spec_hash(load_job_spec(DEMO))
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert spec_hash(load_job_spec(DEMO)) == h
    assert spec_hash(load_job_spec(str(DEMO))) == h


def test_spec_hash_changes_with_an_override_that_changes_a_value() -> None:
    h = spec_hash(load_job_spec(DEMO))
    assert spec_hash(load_job_spec(DEMO, ["stages[0].train.lr=0.02"])) != h
    assert spec_hash(load_job_spec(DEMO, ["stages.eval.generation.max_new_tokens=25"])) != h
    # setting a value to what it already is (or to its default) is not a change
    assert spec_hash(load_job_spec(DEMO, ["stages[0].train.lr=0.01"])) == h
    assert spec_hash(load_job_spec(DEMO, ["stages[0].train.weight_decay=0.0"])) == h


def test_spec_hash_ignores_formatting_key_order_and_cwd(tmp_path: Path, monkeypatch) -> None:
    raw = minimal_raw()
    a = write_spec(tmp_path, raw, "a.yaml")
    reordered = {k: raw[k] for k in reversed(list(raw))}
    reordered["stages"] = [dict(reversed(list(s.items()))) for s in raw["stages"]]
    b = tmp_path / "b.yaml"
    b.write_text("# comment\n" + yaml.safe_dump(reordered, sort_keys=False, default_flow_style=True), encoding="utf-8")
    h = spec_hash(load_job_spec(a))
    assert spec_hash(load_job_spec(b)) == h
    monkeypatch.chdir(tmp_path)
    assert spec_hash(load_job_spec("a.yaml")) == h


def test_resolved_yaml_round_trips_to_the_same_hash() -> None:
    spec = load_job_spec(DEMO, ["stages[1].train.lr=1e-4"])
    again = parse_job_spec(yaml.safe_load(dump_resolved_yaml(spec)), source="resolved", base_dir=Path("/"))
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)


# ------------------------------------------------------------------------------------------ schema


def test_json_schema() -> None:
    schema = json_schema()
    assert "stages" in schema["properties"]
    assert {"name", "stages"} <= set(schema["required"])
    text = json.dumps(schema)
    assert json.loads(text) == schema
    for kind in ("text_sft", "asr_adapter", "multitask", "merge", "eval", "suite_eval", "nightly_eval"):
        assert f'"{kind}"' in text


# ------------------------------------------------------------------------------------------ cluster profiles


def write_text(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def profile_error(path: Path) -> str:
    with pytest.raises(JobSpecError) as info:
        load_cluster_profile(path)
    return str(info.value)


def test_shipped_local_profile() -> None:
    prof = load_cluster_profile(REPO / "cluster_configs" / "local.yaml")
    assert isinstance(prof, LocalProfile)
    assert (prof.kind, prof.name, prof.isolation, prof.gpus) == ("local", "local", "subprocess", 0)


def test_slurm_profile(tmp_path: Path) -> None:
    path = write_text(tmp_path, "slurm.yaml", "kind: slurm\nname: hpc\npartition: gpu\nnodes: 2\n"
                                              "gpus_per_node: 4\nsetup: [module load cuda]\n")
    prof = load_cluster_profile(path)
    assert isinstance(prof, SlurmProfile)
    assert (prof.name, prof.partition, prof.nodes, prof.gpus_per_node) == ("hpc", "gpu", 2, 4)
    assert prof.setup == ["module load cuda"]
    assert prof.timeout_min == 60


def test_ray_profile(tmp_path: Path) -> None:
    path = write_text(tmp_path, "ray.yaml", "kind: ray\nname: r\naddress: auto\nnum_workers: 2\nuse_gpu: true\n")
    prof = load_cluster_profile(path)
    assert isinstance(prof, RayProfile)
    assert (prof.address, prof.num_workers, prof.use_gpu, prof.placement_strategy) == ("auto", 2, True, "PACK")


def test_profile_unknown_kind(tmp_path: Path) -> None:
    path = write_text(tmp_path, "k.yaml", "kind: k8s\nname: x\n")
    msg = profile_error(path)
    assert msg.splitlines()[0] == f"{path}: 1 problem"
    assert "'k8s'" in msg
    for tag in ("'local'", "'slurm'", "'ray'"):
        assert tag in msg


def test_profile_without_kind(tmp_path: Path) -> None:
    msg = profile_error(write_text(tmp_path, "k.yaml", "name: x\n"))
    assert problem_lines(msg) == ["kind: required, one of 'local', 'slurm', 'ray'"]


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: {a: 1}\nname: x\n", "kind: expected one of 'local', 'slurm', 'ray' (got {'a': 1})"),
    ("kind: [slurm]\nname: x\n", "kind: expected one of 'local', 'slurm', 'ray' (got ['slurm'])"),
    ("kind: slrum\nname: x\n", "kind: expected one of 'local', 'slurm', 'ray' (got 'slrum'); did you mean 'slurm'?"),
    ("Kind: slurm\nname: x\n", "kind: required, one of 'local', 'slurm', 'ray'; found 'Kind', did you mean 'kind'?"),
])
def test_profile_kind_is_checked_first(tmp_path: Path, text: str, expected: str) -> None:
    assert problem_lines(profile_error(write_text(tmp_path, "k.yaml", text))) == [expected]


def test_slurm_profile_unknown_key(tmp_path: Path) -> None:
    path = write_text(tmp_path, "s.yaml", "kind: slurm\nname: c\npartiton: gpu\n")
    assert problem_lines(profile_error(path)) == ["partiton: unknown key; did you mean 'partition'?"]


def test_ray_profile_unknown_key_lists_allowed(tmp_path: Path) -> None:
    path = write_text(tmp_path, "r.yaml", "kind: ray\nname: c\nzzqqxx: 1\n")
    (line,) = problem_lines(profile_error(path))
    assert line.startswith("zzqqxx: unknown key; allowed keys: kind, name, address")


def test_profile_bad_values_all_listed(tmp_path: Path) -> None:
    path = write_text(tmp_path, "s.yaml", "kind: slurm\nnodes: 0\n")
    msg = profile_error(path)
    assert msg.splitlines()[0] == f"{path}: 2 problems"
    assert set(problem_lines(msg)) == {"name: Field required", "nodes: Input should be greater than 0 (got 0)"}


def test_profile_not_a_mapping(tmp_path: Path) -> None:
    msg = profile_error(write_text(tmp_path, "p.yaml", "- local\n"))
    assert problem_lines(msg) == ["<root>: expected a mapping of profile fields (got list)"]


def test_find_cluster_profile_falls_back_to_embedded_local(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    prof = find_cluster_profile("local")
    assert prof == LocalProfile(kind="local")
    prof = find_cluster_profile("local", spec_path=tmp_path / "jobs" / "x.yaml")
    assert prof == LocalProfile(kind="local")


def test_find_cluster_profile_prefers_a_file_in_cwd(tmp_path: Path, monkeypatch) -> None:
    write_text(tmp_path, "cluster_configs/local.yaml", "kind: local\nname: local\ngpus: 1\n")
    write_text(tmp_path, "cluster_configs/hpc.yaml", "kind: slurm\nname: hpc\n")
    monkeypatch.chdir(tmp_path)
    assert find_cluster_profile("local").gpus == 1
    assert isinstance(find_cluster_profile("hpc"), SlurmProfile)


def test_find_cluster_profile_next_to_the_spec(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    prof = find_cluster_profile("local", spec_path=DEMO)
    assert prof == load_cluster_profile(REPO / "cluster_configs" / "local.yaml")


def test_find_cluster_profile_by_path(tmp_path: Path) -> None:
    path = write_text(tmp_path, "my.yaml", "kind: ray\nname: r\n")
    assert isinstance(find_cluster_profile(str(path)), RayProfile)


def test_find_cluster_profile_unknown_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JobSpecError) as info:
        find_cluster_profile("gpu")
    msg = str(info.value)
    assert msg.startswith("cluster profile 'gpu' not found (looked in ")
    assert str(tmp_path / "cluster_configs" / "gpu.yaml") in msg


def test_find_cluster_profile_invalid_file_is_reported(tmp_path: Path, monkeypatch) -> None:
    path = write_text(tmp_path, "cluster_configs/hpc.yaml", "kind: slurm\nname: hpc\nnodes: -1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JobSpecError) as info:
        find_cluster_profile("hpc")
    assert str(info.value).startswith(str(path))
    assert "nodes: Input should be greater than 0 (got -1)" in str(info.value)


# ------------------------------------------------------------------ evaluation stages


def _eval_job(tmp_path, stages, model=None):
    from sllm_lib.spec import parse_job_spec

    raw = {"name": "j", "stages": stages, **({"model": model} if model else {})}
    return parse_job_spec(raw, source="job.yaml", base_dir=tmp_path)


def test_nightly_job_needs_no_model_and_resolves_suite_paths(tmp_path) -> None:
    spec = _eval_job(tmp_path, [{"name": "n", "kind": "nightly_eval", "suite": "suites/s.yaml",
                                 "registered_model": "m", "date": "2026-11-20"}])
    st = spec.stages[0]
    assert spec.model is None and st.suite == str(tmp_path / "suites" / "s.yaml") and st.date == "2026-11-20"


@pytest.mark.parametrize("stage, needle", [
    ({"name": "n", "kind": "nightly_eval", "suite": "s.yaml", "registered_model": "m", "date": "20-11-2026"},
     "stages[0].date"),
    ({"name": "n", "kind": "nightly_eval", "suite": "s.yaml", "registered_model": "m", "champion_alias": "candidate"},
     "must differ"),
    ({"name": "n", "kind": "nightly_eval", "suite": "s.yaml", "registered_model": "m", "latest_versions": 99},
     "latest_versions"),
    ({"name": "e", "kind": "suite_eval", "suite": "s.yaml"}, "needs a model"),
])
def test_bad_eval_stages_name_the_field(tmp_path, stage, needle) -> None:
    from sllm_lib.errors import JobSpecError

    with pytest.raises(JobSpecError) as err:
        _eval_job(tmp_path, [stage])
    assert "job.yaml" in str(err.value) and needle in str(err.value)


def test_training_stage_still_requires_a_model(tmp_path) -> None:
    from sllm_lib.errors import JobSpecError

    with pytest.raises(JobSpecError, match="model: required by stage"):
        _eval_job(tmp_path, [{"name": "t", "kind": "text_sft", "train": {"max_steps": 2}, "trainable": ["projector"],
                                     "data": {"train": [{"kind": "text_qa", "path": "x.jsonl"}]}}])


def test_nightly_cannot_hang_off_a_model_stage(tmp_path) -> None:
    from sllm_lib.errors import JobSpecError

    with pytest.raises(JobSpecError, match="picks its models from the registry"):
        _eval_job(tmp_path, [
            {"name": "m", "kind": "merge", "from_stage": "n"},
            {"name": "n", "kind": "nightly_eval", "suite": "s.yaml", "registered_model": "m", "from_stage": "m"},
        ], model={"base": "tiny:voxtral"})


# ------------------------------------------------------------------------------------------ strict values (issue 22)


def test_a_key_written_twice_is_an_error_naming_both_places(tmp_path: Path) -> None:
    path = write_spec(tmp_path, minimal_raw())
    text = path.read_text(encoding="utf-8").replace("lr: ", "lr: 0.5\n    lr: ", 1)
    assert text.count("lr: ") == 2
    path.write_text(text, encoding="utf-8")
    msg = spec_error(path)
    assert "key 'lr' appears twice in one mapping (first at line" in msg and "keep one" in msg


def test_yaml_merge_keys_may_still_override(tmp_path: Path) -> None:
    from sllm_lib.spec import read_yaml

    path = write_text(tmp_path, "m.yaml", "a: &d {x: 1, y: 2}\nb:\n  <<: *d\n  x: 3\n")
    assert read_yaml(path) == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda r: r["stages"][0]["train"].update(warmup_steps=True),
     "stages[0].train.warmup_steps: expected a number, not a boolean (got true)"),
    (lambda r: r["stages"][0]["data"]["train"][0].update(weight=False),
     "stages[0].data.train[0].weight: expected a number, not a boolean (got false)"),
    (lambda r: r["stages"][0]["lora"].update(r=True), "stages[0].lora.r: expected a number, not a boolean (got true)"),
])
def test_a_boolean_is_not_a_number(tmp_path: Path, mutate, expected: str) -> None:
    assert problem_lines(spec_error(mutated(tmp_path, mutate))) == [expected]


def test_boolean_fields_still_take_booleans(tmp_path: Path) -> None:
    spec = load_job_spec(mutated(tmp_path, lambda r: r["stages"][0]["train"].update(gradient_checkpointing=True)))
    assert spec.stages[0].train.gradient_checkpointing is True


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda r: r["stages"][0]["data"]["train"][0].update(weight=1e30), "stages[0].data.train[0].weight"),
    (lambda r: r["stages"][0]["train"].update(max_steps=10**12), "stages[0].train.max_steps"),
    (lambda r: r["stages"][0]["train"].update(max_seq_len=10**9), "stages[0].train.max_seq_len"),
    (lambda r: r.update(name="j" * 101), "name"),
    (lambda r: r["stages"][0].update(name="s" * 101), "stages[0].name"),
])
def test_absurd_magnitudes_and_long_names_are_refused(tmp_path: Path, mutate, field: str) -> None:
    (line,) = problem_lines(spec_error(mutated(tmp_path, mutate)))
    assert line.startswith(f"{field}: ") and ("less than or equal" in line or "at most 100 characters" in line), line
    assert len(line) < 300  # a long value is shown clipped


def test_profile_magnitudes_are_bounded(tmp_path: Path) -> None:
    path = write_text(tmp_path, "s.yaml", "kind: slurm\nname: c\nmem_gb: 1000000000\ngpus_per_node: 1000\n")
    lines = problem_lines(profile_error(path))
    assert any(x.startswith("mem_gb: Input should be less than or equal to 65536") for x in lines), lines
    assert any(x.startswith("gpus_per_node: Input should be less than or equal to 64") for x in lines), lines


def _real_size_specs() -> list[Path]:
    import yaml

    out = []
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        base = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model") or {}).get("base", "")
        if base and not base.startswith(("tiny:", "mini:")):  # the presets are CPU-sized on purpose
            out.append(path)
    return out


def test_the_shipped_real_size_specs_are_found() -> None:
    assert {p.name for p in _real_size_specs()} >= {"sllm_voxtral_3stage.yaml", "medqa_exaone_qlora.yaml",
                                                    "aac_vlm_phi35.yaml", "compress_medqa_exaone.yaml"}


@pytest.mark.parametrize("path", _real_size_specs(), ids=lambda p: p.name)
def test_a_real_size_spec_defaults_to_a_gpu_cluster(path: Path) -> None:
    """A bare `sllm submit` of a shipped real-size spec never targets the CPU of the machine it is typed on."""
    spec = load_job_spec(path)
    profile = find_cluster_profile(spec.cluster, spec_path=path)
    assert profile.kind != "local" or profile.gpus, f"{path.name}: cluster {spec.cluster!r} is this machine's CPU"


def test_local_profile_warm_start_only_without_gpus() -> None:
    assert LocalProfile(kind="local").warm
    assert not LocalProfile(kind="local", gpus=1).warm
    assert not LocalProfile(kind="local", warm_start=False).warm
    with pytest.raises(ValueError, match="warm_start: true needs gpus: 0"):
        LocalProfile(kind="local", gpus=1, warm_start=True)
