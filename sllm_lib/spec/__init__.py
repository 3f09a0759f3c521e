"""Job specs and cluster profiles: pydantic v2 models, strict loading, overrides and a canonical hash.

A spec is validated once, here, into frozen typed objects; everything after `load_job_spec` takes those.
Importing this package must stay cheap (no torch): `sllm validate` uses it. The modules, from the bottom:
`base` (the strict model base), `stages` (one model per stage kind, with its traits), `job`, `profiles`,
`problems` (reporting every problem of a file at once), `yaml_io`, `overrides`, `graph`, `load`.
"""

from __future__ import annotations

from sllm_lib.spec.base import GateTier, RecordKind, Strict, Threshold, TrainableGroup, parse_threshold
from sllm_lib.spec.stages import (
    DEFAULT_PRUNE_TARGETS, MODEL_FOLDER_KINDS, MODEL_KINDS, STAGE_MODELS, STAGE_TYPES, TRAIN_KINDS,
    VISION_INSTRUCTION, VISION_PROMPT, AsrAdapterStage, BootstrapSpec, CausalSftStage, CompressionTargets,
    DataSpec, DatasetRef, DeepSpeedSpec, DistillStage, EvalDatasetRef, EvalStage, GatePolicySpec, GenerationSpec, LoraSpec,
    MergeStage, MultitaskStage, NightlyEvalStage, PruneStage, QuantSpec, QuantizeStage, RegisterSpec, StageSpec,
    SuiteEvalStage, TextSftStage, TrainSpec, VisionSftStage, WatchSpec, EarlyStopSpec, render_vision_prompt
)
from sllm_lib.spec.job import CacheSpec, JobSpec, ModelSpec, SweepSpec, TrackingSpec
from sllm_lib.spec.profiles import ClusterProfile, LocalProfile, RayProfile, SlurmProfile
from sllm_lib.spec.problems import raise_problems, validation_problems
from sllm_lib.spec.yaml_io import read_yaml
from sllm_lib.spec.overrides import apply_overrides
from sllm_lib.spec.graph import find_cycle, graph_problems, stage_with, sweep_problems, topo_order
from sllm_lib.spec.load import (
    dump_resolved_yaml, find_cluster_profile, json_schema, load_cluster_profile, load_job_spec, looks_like_profile,
    parse_job_spec, spec_hash, spec_to_dict
)

__all__ = [
    "GateTier", "RecordKind", "Strict", "Threshold", "TrainableGroup", "parse_threshold", "DEFAULT_PRUNE_TARGETS", "MODEL_FOLDER_KINDS", "MODEL_KINDS",
    "STAGE_MODELS", "STAGE_TYPES", "TRAIN_KINDS", "VISION_INSTRUCTION", "VISION_PROMPT", "AsrAdapterStage",
    "BootstrapSpec", "CausalSftStage", "CompressionTargets", "DataSpec", "DatasetRef", "DeepSpeedSpec",
    "DistillStage", "EvalDatasetRef", "EvalStage", "GatePolicySpec", "GenerationSpec", "LoraSpec", "MergeStage", "MultitaskStage",
    "NightlyEvalStage", "PruneStage", "QuantSpec", "QuantizeStage", "RegisterSpec", "StageSpec", "SuiteEvalStage",
    "TextSftStage", "TrainSpec", "VisionSftStage", "WatchSpec", "EarlyStopSpec", "render_vision_prompt", "CacheSpec", "JobSpec", "ModelSpec",
    "SweepSpec", "TrackingSpec", "ClusterProfile", "LocalProfile", "RayProfile", "SlurmProfile", "raise_problems",
    "validation_problems", "read_yaml", "apply_overrides", "find_cycle", "graph_problems", "stage_with",
    "sweep_problems", "topo_order", "dump_resolved_yaml", "find_cluster_profile", "json_schema",
    "load_cluster_profile", "load_job_spec", "looks_like_profile", "parse_job_spec", "spec_hash", "spec_to_dict"
]
