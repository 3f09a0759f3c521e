"""Model references, resolved to a local folder and loaded.

A reference is a tiny preset (`tiny:NAME`, built once), a merged model folder, `models:/NAME@ALIAS`,
`models:/NAME/VERSION` (or NAME@ALIAS), the MLflow run id of a merge stage, or a hub id. Registry models are
downloaded once into `$SLLM_HOME/models/<model id>` (atomic rename). Used by training stages (distill teachers,
quantize baselines), evaluation (`sllm eval`, the nightly job) and `sllm export`.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sllm_lib.errors import ArtifactNotFoundError
from sllm_lib.files import new_temp_folder, publish_folder, sllm_home
from sllm_lib.tracking.lineage import version_model_id  # noqa: F401  (also this module's API)

log = logging.getLogger(__name__)

_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ResolvedModel:
    """Where a model's files are and, for registry models, which version it is."""

    path: Path
    ref: str
    name: str | None = None
    version: str | None = None
    model_id: str | None = None
    source_run_id: str | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.name:
            return f"{self.name} v{self.version}" + "".join(f" @{a}" for a in self.aliases)
        return str(self.path)


def download_logged_model(model_id: str, tracking_uri: str) -> Path:
    """The logged model's files, downloaded once; a partial download never becomes visible."""
    import mlflow

    final = sllm_home() / "models" / model_id
    if (final / "config.json").is_file():
        return final
    tmp = new_temp_folder(final)
    try:
        from sllm_lib.tracking.tracker import global_tracking_uri

        with global_tracking_uri(tracking_uri):  # models:/<id> resolves through the global client
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(tmp),
                                                           tracking_uri=tracking_uri))
        src = got if (got / "config.json").is_file() else next((p.parent for p in got.rglob("config.json")), None)
        if src is None:
            raise ArtifactNotFoundError(f"logged model {model_id}: no config.json among its files")
        publish_folder(src, final, if_exists="keep")  # a concurrent download of the same model may have won
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(ref: str, tracking_uri: str) -> ResolvedModel:
    """Find a model's files from a folder, a registry reference or a merge run id.

    Raises:
        ArtifactNotFoundError: the reference names nothing loadable (the message says what was tried).
    """
    if ref.startswith(("tiny:", "mini:")):  # a preset: built once, then a folder like any other
        return ResolvedModel(path=model_ref_path(ref, tracking_uri), ref=ref)
    p = Path(ref).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ArtifactNotFoundError(f"{ref}: a folder but not a model (no config.json); point at a merge "
                                        f"stage's output/ folder")
        return ResolvedModel(path=p.resolve(), ref=ref)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    if ref.startswith("models:/") or "@" in ref:
        from sllm_lib.tracking.lineage import parse_model_ref

        name, alias, version = parse_model_ref(ref)
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except MlflowException as exc:
            raise ArtifactNotFoundError(f"{ref}: not in the registry at {tracking_uri} ({exc.message})") from exc
        if not version_model_id(mv):
            raise ArtifactNotFoundError(f"{ref}: version {mv.version} has no logged model to load")
        return ResolvedModel(path=download_logged_model(version_model_id(mv), tracking_uri), ref=ref, name=name,
                             version=str(mv.version), model_id=version_model_id(mv), source_run_id=mv.run_id,
                             aliases=list(mv.aliases or []))
    if _RUN_ID_RE.match(ref):
        from sllm_lib.tracking.tracker import TAG_OUTPUT

        try:
            run = client.get_run(ref)
        except MlflowException as exc:
            raise ArtifactNotFoundError(f"run {ref}: not found at {tracking_uri} ({exc.message})") from exc
        out = run.data.tags.get(TAG_OUTPUT)
        if not out or not (Path(out) / "config.json").is_file():
            raise ArtifactNotFoundError(f"run {ref}: its output ({out or 'none recorded'}) is not a merged model; "
                                        f"give the run id of a merge stage")
        return ResolvedModel(path=Path(out), ref=ref, source_run_id=ref)
    raise ArtifactNotFoundError(f"model {ref!r}: not a folder, not models:/NAME@ALIAS or models:/NAME/VERSION, "
                                f"and not a run id")


def is_registry_ref(ref: str) -> bool:
    """A reference only the tracking store can resolve: models:/NAME@ALIAS, NAME@ALIAS, models:/NAME/VERSION or a
    merge run id (a folder, a tiny preset or a hub id is not)."""
    if Path(ref).expanduser().is_dir():
        return False
    return ref.startswith("models:/") or "@" in ref or bool(_RUN_ID_RE.match(ref))


def model_ref_path(ref: str, tracking_uri: str) -> Path:
    """Any model reference as a local folder: a tiny preset (built once), a folder, a registry reference or a merge
    run id (`resolve_model`), else a hub id (downloaded into the hub cache; needs network the first time)."""
    from sllm_lib.models.builders import MINI_PREFIX, TINY_PREFIX, materialize_tiny

    if ref.startswith(TINY_PREFIX):
        return materialize_tiny(ref[len(TINY_PREFIX):])
    if ref.startswith(MINI_PREFIX):
        from sllm_lib.models.mini import materialize_mini

        return materialize_mini(ref[len(MINI_PREFIX):])
    if Path(ref).expanduser().is_dir() or is_registry_ref(ref):
        return resolve_model(ref, tracking_uri).path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref))
    except Exception as exc:  # offline, gated or unknown: one line naming what was tried
        raise ArtifactNotFoundError(f"model {ref!r}: not a folder, registry reference, run id or tiny preset, and "
                                    f"the hub download failed ({exc})") from exc


def load_model(path: Path) -> tuple[Any, Any, Any]:
    """Model (eval mode), tokenizer and feature extractor from a merged model folder."""
    from sllm_lib.models.builders import folder_model_spec, load_base_model, load_tokenizer_and_features

    from sllm_lib.models.adapters import chain_system_prompt

    spec = folder_model_spec(path)
    model = load_base_model(str(path), model=spec)
    model.eval()
    # a causal LM is prompted with the system prompt it was trained with (kept in the merge's manifest)
    model.sllm_system_prompt = chain_system_prompt([path])
    tokenizer, features = load_tokenizer_and_features(str(path), trust_remote_code=spec.trust_remote_code)
    return model, tokenizer, features
