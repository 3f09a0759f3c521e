"""Shared, content-addressed cache of audio features (local directory or S3, optional node-local tier).

    from sllm_lib.cache import FeatureCache
    cache = FeatureCache("s3://bucket/sllm/features", local_dir="/scratch/sllm-features", local_cap_gb=50)
    feats = cache.features(audio_path, feature_extractor)  # float16 (n_chunks, n_mels, 3000)
"""

from sllm_lib.cache.keys import CODE_VERSION, audio_hash, extractor_settings, fingerprint
from sllm_lib.cache.store import CacheStats, FeatureCache

__all__ = ["CODE_VERSION", "CacheStats", "FeatureCache", "audio_hash", "extractor_settings", "fingerprint"]
