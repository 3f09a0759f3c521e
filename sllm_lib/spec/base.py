"""The base of every spec model and the literal types the models share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


RecordKind = Literal["text_qa", "asr", "speech_qa", "classification", "vision"]
TrainableGroup = Literal["lora", "projector", "audio_encoder", "llm"]


class Strict(BaseModel):
    """The base of every spec model: unknown keys are errors (pydantic's default drops them silently), and a
    validated spec is frozen. Suites and other YAML files sllm reads use it too."""

    model_config = ConfigDict(extra="forbid", frozen=True)
