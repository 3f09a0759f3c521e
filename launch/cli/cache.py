"""`sllm cache build | stats | verify | gc`: the shared audio-feature cache of a spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from launch.cli.common import ClusterOpt, SetOpt, _spec_cache, cache_app, console
from sllm_lib.errors import SllmError


def _fingerprint(spec: Any) -> str:
    from sllm_lib.cache.keys import fingerprint
    from sllm_lib.models.builders import load_tokenizer_and_features, resolve_model_path

    return fingerprint(load_tokenizer_and_features(resolve_model_path(spec.model))[1])


@cache_app.command("build")
def cache_build(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
                cluster: Optional[str] = ClusterOpt,
                shards: Optional[int] = typer.Option(None, help="Builders (default: local CPU count; SLURM 8).")) -> None:
    """Compute the features of every audio file SPEC reads, sharded over local processes or a SLURM array."""
    from launch.cache_build import make_plan, run_build
    from sllm_lib.spec import find_cluster_profile

    spec, cache = _spec_cache(spec_path, set_)
    if cache.mode == "readonly":
        raise SllmError(f"{spec_path}: cache.mode is readonly; building writes (use --set cache.mode=readwrite)")
    profile = find_cluster_profile(cluster or spec.cluster, spec_path=spec_path)
    n = shards or (max(1, (os.cpu_count() or 1)) if profile.kind == "local" else 8)
    folder = Path(spec.output_dir).resolve() / "cache-build" / spec.name
    plan = make_plan(spec, folder, shards=n)
    total = sum(len(x) for x in plan.shards)
    console.print(f"cache build: {total} clips from {len(plan.datasets)} datasets -> {cache.uri} "
                  f"({len(plan.shards)} {profile.kind} builders)")
    summary = run_build(plan, profile)
    st = summary.stats
    table = Table(title=f"cache build {spec.name}: fingerprint {summary.fingerprint}")
    for col in ("clips", "hits", "misses", "written", "corrupt", "fallbacks", "MB written", "seconds", "clips/s"):
        table.add_column(col, justify="right")
    table.add_row(str(summary.clips), str(st.get("hits", 0)), str(st.get("misses", 0)), str(st.get("writes", 0)),
                  str(st.get("corrupt", 0)), str(st.get("fallbacks", 0)), f"{st.get('bytes_written', 0) / 1e6:.1f}",
                  f"{summary.seconds:.1f}", f"{summary.clips_per_s:.1f}")
    console.print(table)
    for m in summary.manifests:
        console.print(f"manifest: {m}", highlight=False)
    if st.get("fallbacks", 0):
        raise SllmError(f"{st['fallbacks']} clips could not be written to {cache.uri} (see the shard logs in "
                        f"{folder})")


@cache_app.command("stats")
def cache_stats(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt) -> None:
    """Fingerprints in the cache, entries and coverage of SPEC's audio for the model's fingerprint."""
    from launch.cache_build import spec_audio
    from sllm_lib.cache.keys import audio_hash

    spec, cache = _spec_cache(spec_path, set_)
    fp = _fingerprint(spec)
    table = Table(title=f"feature cache {cache.uri}")
    for col in ("fingerprint", "entries", "this model"):
        table.add_column(col)
    for f in cache.fingerprints():
        table.add_row(f, str(sum(1 for _ in cache.entries(f))), "yes" if f == fp else "")
    console.print(table)
    have = set(cache.entries(fp)) if fp in cache.fingerprints() else set()
    for name, paths in spec_audio(spec).items():
        n = sum(audio_hash(p) in have for p in paths)
        console.print(f"{name}: {n}/{len(paths)} clips cached")


@cache_app.command("verify")
def cache_verify(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
                 sample: Optional[int] = typer.Option(None, help="Check N random entries (default: all)."),
                 recompute: bool = typer.Option(False, help="Also recompute from the audio and compare.")) -> None:
    """Check entries: header, shape, dtype, checksum; with --recompute compare against fresh features."""
    from launch.cache_build import spec_audio
    from sllm_lib.cache.keys import audio_hash
    from sllm_lib.models.builders import load_tokenizer_and_features, resolve_model_path

    spec, cache = _spec_cache(spec_path, set_)
    extractor = load_tokenizer_and_features(resolve_model_path(spec.model))[1]
    from sllm_lib.cache.keys import fingerprint

    fp = fingerprint(extractor)
    index = {audio_hash(p): p for paths in spec_audio(spec).values() for p in paths} if recompute else None
    res = cache.verify(fp, sample=sample, audio_index=index, feature_extractor=extractor if recompute else None)
    console.print(" | ".join(f"{k} {v}" for k, v in res.items()))
    if res.get("corrupt") or res.get("mismatched"):
        raise SllmError(f"{cache.uri}: {res.get('corrupt', 0)} corrupt and {res.get('mismatched', 0)} mismatched "
                        f"entries (removed: {res.get('removed', 0)})")


@cache_app.command("gc")
def cache_gc(spec_path: Path = typer.Argument(..., metavar="SPEC"), set_: Optional[list[str]] = SetOpt,
             keep: Optional[list[str]] = typer.Option(None, "--keep", help="Fingerprints to keep (repeatable); "
                                                                           "default: the spec model's."),
             yes: bool = typer.Option(False, "--yes", help="Delete without asking.")) -> None:
    """Delete every fingerprint (extractor setting / code version) but the ones kept."""
    spec, cache = _spec_cache(spec_path, set_)
    kept = list(keep or [_fingerprint(spec)])
    doomed = [f for f in cache.fingerprints() if f not in kept]
    if not doomed:
        console.print("nothing to delete")
        return
    if not yes and not typer.confirm(f"delete fingerprints {', '.join(doomed)} from {cache.uri}?"):
        raise typer.Exit(1)
    res = cache.gc(kept)
    console.print(" | ".join(f"{k} {v}" for k, v in res.items()))
