"""The job spec: model, tracking, feature cache, sweep and the stages."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sllm_lib.spec.base import MINI_PREFIX, MINI_PRESETS, NAME_MAX, TINY_PREFIX, TINY_PRESETS, Strict
from sllm_lib.spec.stages import StageSpec


# a Hugging Face repo id: NAME or ORG/NAME, letters, digits and - _ . (at most 96 characters each)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


class ModelSpec(Strict):
    base: str = Field(
        description="Base model: 'tiny:<preset>' (random weights from a config, no download), a local path, or a hub id."
    )
    revision: str | None = Field(default=None, description="Hub revision (commit, tag or branch).")

    @field_validator("base")
    @classmethod
    def _base_form(cls, v: str) -> str:
        """The form of a model reference, known before anything runs (whether a folder or hub id exists is the
        pre-flight's and the stage's to find out)."""
        what = ("expected 'tiny:<preset>', 'mini:<preset>', a model folder (starting with /, . or ~) or a hub id such as "
                "'mistralai/Voxtral-Mini-3B-2507'")
        if not v.strip():
            raise ValueError(f"empty; {what}")
        if v != v.strip():
            raise ValueError(f"has spaces at its start or end; {what}")
        if v.startswith(TINY_PREFIX):
            if v[len(TINY_PREFIX):] not in TINY_PRESETS:
                raise ValueError(f"unknown tiny preset; presets: {', '.join(TINY_PREFIX + p for p in TINY_PRESETS)}")
        elif v.startswith(MINI_PREFIX):
            if v[len(MINI_PREFIX):] not in MINI_PRESETS:
                raise ValueError(f"unknown mini preset; presets: {', '.join(MINI_PREFIX + p for p in MINI_PRESETS)}")
        elif not v.startswith(("/", ".", "~")) and not _HUB_ID.match(v):
            raise ValueError(what)
        return v

    audio_token_id: int | None = Field(default=None, description="Override; Voxtral's config leaves it None.")
    trust_remote_code: bool = False


class TrackingSpec(Strict):
    uri: str | None = Field(default=None, description="MLflow tracking URI; default: sqlite file in the output dir.")
    experiment: str | None = Field(default=None, description="MLflow experiment; default: the job name.")
    strict: bool = Field(default=False, description="Fail the stage on a tracking error instead of journaling it.")
    call_timeout_s: float = Field(
        default=5.0, gt=0, le=300,
        description="Longest a training process waits on one tracking call; a slower or failed call goes to the "
                    "run's tracking journal (replayed at stage end or by `sllm tracking sync`).")
    http_timeout_s: int = Field(default=5, gt=0, le=600, description="MLflow client HTTP timeout per request.")
    http_max_retries: int = Field(default=2, ge=1, le=10, description="MLflow client HTTP retries per request.")
    model_files: Literal["all", "pointer"] = Field(
        default="all",
        description="What a stage's logged model uploads to the artifact store: all its files (a team server's "
                    "S3 then holds the adapter or merged weights), or pointer: configs, manifest and tokenizer "
                    "plus a pointer to the weights' folder (for very large weights on a shared filesystem).")
    redact: list[str] = Field(
        default_factory=list,
        description="Extra names (spec keys or environment variables) whose values are secret; names that look "
                    "like keys, secrets, tokens or passwords are always redacted.")


class CacheSpec(Strict):
    """The shared, content-addressed audio-feature cache the audio stages read through."""

    mode: Literal["readwrite", "readonly", "off"] = Field(
        default="readwrite", description="readwrite: read, and write what is missing; readonly: read only "
                                         "(a shared cache built by `sllm cache build`); off: compute on the fly.")
    uri: str | None = Field(default=None, description="A directory, or s3://bucket/prefix (any S3-compatible "
                                                      "store); default <output_dir>/cache.")
    dir: str | None = Field(default=None, description="Deprecated spelling of uri for a local directory.")
    local_dir: str | None = Field(default=None, description="Local disk tier in front of an s3:// cache; "
                                                            "default $SLLM_HOME/feature-cache.")
    local_cap_gb: float | None = Field(default=20.0, gt=0, le=1e6, description="Size cap of the local tier (LRU eviction).")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, Ceph, rclone...); default AWS. "
                                                               "Credentials come from the environment or profile.")
    required: bool = Field(default=False, description="Fail when the cache is unreachable instead of computing "
                                                      "features on the fly with a warning.")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Longest a cache call may block.")
    prefetch: int | None = Field(default=None, ge=1, le=64, description="Entries read (or computed) at once ahead "
                                 "of the encoder: parallel S3 GETs on a fresh node; default 8 with s3://, 2 for a "
                                 "directory; 1 reads one at a time.")


class SweepSpec(Strict):
    stage: str = Field(description="The training stage run once per grid point (a job array on SLURM).")
    grid: dict[str, list[Any]] = Field(
        min_length=1, description="Dotted stage fields -> values, e.g. {train.lr: [1e-4, 2e-4], lora.r: [8, 16]}."
    )
    metric: str = Field(default="val_loss", description="Result metric that picks the point later stages use.")
    mode: Literal["min", "max"] = "min"
    max_parallel: int | None = Field(default=None, gt=0, le=10_000, description="Points running at once (SLURM array %N).")

    @field_validator("grid")
    @classmethod
    def _non_empty_values(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid[{key!r}] has no values")
        return v

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid, in a stable order."""
        import itertools

        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]


class JobSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=NAME_MAX,
                      description="Job name (runs/<name>/...): letters, digits, _ . -, at most 100 characters.")
    description: str = ""
    cluster: str = Field(default="local", description="Cluster profile name (cluster_configs/<name>.yaml) or path.")
    model: ModelSpec | None = Field(default=None, description="Base model; required by training, merge and eval stages.")
    output_dir: str = Field(default="runs", description="Root for run directories; relative to the working dir.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of every stage process; a value '${VAR}' is read from the launcher's environment. "
                    "Values of secret-looking names (HF_TOKEN, *_API_KEY, ...) never reach MLflow or the logs.")
    stages: list[StageSpec] = Field(min_length=1)
    sweep: SweepSpec | None = Field(default=None, description="Run one training stage over a grid of settings.")

    @model_validator(mode="after")
    def _unique_names(self) -> JobSpec:
        seen: set[str] = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"duplicate stage name {s.name!r}")
            seen.add(s.name)
        return self

    def stage(self, name: str) -> Any:
        """The stage named `name` (KeyError if absent)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)
