"""The job's audio-feature cache: built from `cache:` in the spec, made active for a stage's data path."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cache_kwargs(spec: Any) -> dict[str, Any]:
    """FeatureCache keyword arguments from the spec (paths absolute, defaults filled)."""
    c = spec.cache
    uri = c.uri or c.dir or str(Path(spec.output_dir).resolve() / "cache")
    if not uri.startswith("s3://"):
        uri = str(Path(uri).expanduser().resolve())
    from sllm_lib.files import sllm_home

    local = c.local_dir or (str(sllm_home() / "feature-cache") if uri.startswith("s3://") else None)
    return {"uri": uri, "mode": c.mode, "local_dir": local, "local_cap_gb": c.local_cap_gb,
            "required": c.required, "endpoint_url": c.endpoint_url, "timeout_s": c.timeout_s,
            "prefetch": c.prefetch}


def activate(spec: Any) -> Any:
    """Make the spec's cache the one `audio_features` reads through (None when mode is off)."""
    from sllm_lib.audio.features import set_feature_cache

    if spec.cache.mode == "off":
        set_feature_cache(None)
        return None
    from sllm_lib.cache.store import FeatureCache

    cache = FeatureCache(**cache_kwargs(spec))
    set_feature_cache(cache)
    return cache
