"""The stage kinds: one list (the spec models in sllm_lib/spec.py), one function each (launch/stages.py), and
class-level traits that every other place asks instead of naming kinds."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from launch.stages import STAGE_FUNCTIONS
from sllm_lib.spec import (
    MODEL_FOLDER_KINDS,
    MODEL_KINDS,
    STAGE_MODELS,
    STAGE_TYPES,
    TRAIN_KINDS,
    JobSpec,
    StageSpec,
)

REPO = Path(__file__).resolve().parents[3]


def test_every_stage_kind_has_a_stage_function() -> None:
    assert set(STAGE_FUNCTIONS) == set(STAGE_TYPES)
    union = typing.get_args(typing.get_args(StageSpec)[0])
    assert union == STAGE_MODELS  # the job spec accepts exactly the registered kinds
    stages = JobSpec.model_fields["stages"].annotation
    assert typing.get_args(typing.get_args(typing.get_args(stages)[0])[0]) == STAGE_MODELS


def test_kind_lists_are_derived_from_the_traits() -> None:
    assert TRAIN_KINDS == ("text_sft", "asr_adapter", "multitask", "causal_sft", "distill", "vision_sft")
    assert MODEL_KINDS == (*TRAIN_KINDS, "merge", "eval")
    assert MODEL_FOLDER_KINDS == ("merge", "prune", "quantize")
    for kind, cls in STAGE_TYPES.items():
        assert cls.kind_name() == kind
        if cls.trains:  # a training stage chains an adapter, needs the base model and a known architecture
            assert cls.output == "adapter" and cls.needs_base_model and cls.model_family is not None
        else:
            assert cls.output != "adapter" and cls.model_family is None
        if cls.scores_suite or cls.scores_datasets:
            assert not cls.trains
        for up in cls.upstream_kinds or ():
            assert up in STAGE_TYPES and STAGE_TYPES[up].output == "model_folder"


def _kind_literals(tree: ast.AST) -> list[int]:
    """Lines of list/tuple/set literals holding two or more stage kind names (a stage model's own
    `upstream_kinds` trait excepted)."""
    traits = {id(node.value) for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
              and any(isinstance(t, ast.Name) and t.id == "upstream_kinds"
                      for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and id(node) not in traits:
            kinds = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in STAGE_TYPES]
            if len(kinds) >= 2:
                lines.append(node.lineno)
    return lines


def test_no_module_keeps_its_own_list_of_kinds() -> None:
    """A new kind must not need edits in lists scattered over the code: traits answer those questions."""
    found = []
    for pkg in ("sllm_lib", "eval", "launch"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            for line in _kind_literals(ast.parse(path.read_text(encoding="utf-8"))):
                found.append(f"{path.relative_to(REPO)}:{line}")
    assert not found, "lists of stage kinds outside the spec models (ask a trait instead):\n" + "\n".join(found)


def test_the_kind_list_check_sees_a_list() -> None:
    source = 'KINDS = ("merge", "prune")\nx = ["eval"]\nclass S:\n    upstream_kinds: T = ("merge", "prune")\n'
    assert _kind_literals(ast.parse(source)) == [1]
