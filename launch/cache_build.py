"""`sllm cache build`: compute every audio feature a spec needs, once, sharded over workers.

The launcher lists the unique audio files of the spec's audio datasets (training, validation and
eval), splits them into shards and runs one builder per shard: local processes, or a SLURM job
array through submitit. Each builder writes its progress and final counts to small JSON files in
the build folder (shared filesystem on a cluster); the launcher shows one progress bar over all of
them, then writes a manifest per dataset (durations and frame counts, so length-grouped samplers
never open audio) and prints a summary: hits, misses, bytes, clips/s.

    python -m launch.cache_build PLAN.json SHARD      # what each builder runs
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sllm_lib.files import write_json_atomic

log = logging.getLogger(__name__)

AUDIO_KINDS = ("asr", "speech_qa")


@dataclass
class BuildPlan:
    cache: dict[str, Any]  # FeatureCache keyword arguments (uri, mode, local_dir, ...)
    extractor: str  # model folder the feature extractor is read from
    shards: list[list[str]]  # audio paths per shard
    datasets: dict[str, list[str]] = field(default_factory=dict)  # dataset name -> its audio paths
    folder: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)

    @classmethod
    def load(cls, path: Path) -> BuildPlan:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def spec_audio(spec: Any) -> dict[str, list[str]]:
    """Dataset name -> unique audio paths, over every audio dataset the spec reads (order kept)."""
    from sllm_lib.data.records import read_records

    out: dict[str, list[str]] = {}
    for s in spec.stages:
        for ref in s.input_datasets():
            if ref.kind not in AUDIO_KINDS:
                continue
            name = Path(ref.path).stem
            if name in out:
                continue
            recs = read_records(ref.path, ref.kind, on_bad_record=ref.on_bad_record,
                                max_text_chars=ref.max_text_chars).records
            out[name] = list(dict.fromkeys(r["audio_path"] for r in recs))
    return out


def make_plan(spec: Any, folder: Path, *, shards: int) -> BuildPlan:
    from sllm_lib.data.feature_cache import cache_kwargs
    from sllm_lib.models.builders import resolve_model_path

    datasets = spec_audio(spec)
    audio = list(dict.fromkeys(p for paths in datasets.values() for p in paths))
    n = max(1, min(shards, len(audio)))
    # larger files first, dealt round-robin, so shards take about the same time
    ordered = sorted(audio, key=lambda p: os.path.getsize(p), reverse=True)
    return BuildPlan(cache=cache_kwargs(spec), extractor=resolve_model_path(spec.model),
                     shards=[ordered[i::n] for i in range(n)], datasets=datasets, folder=str(folder))


# ------------------------------------------------------------------------------------------ one builder


def _progress_file(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:04d}.json"


def build_shard(plan_path: str, shard: int) -> dict[str, Any]:
    """Compute (or find) the features of one shard; progress and result go to shard-NNNN.json."""
    import soundfile as sf

    from sllm_lib.audio.features import chunk_frames
    from sllm_lib.cache.keys import audio_hash, fingerprint
    from sllm_lib.cache.store import FeatureCache
    from sllm_lib.models.builders import load_tokenizer_and_features

    plan = BuildPlan.load(Path(plan_path))
    folder = Path(plan.folder)
    _, extractor = load_tokenizer_and_features(plan.extractor)
    cache = FeatureCache(**plan.cache)
    fp = fingerprint(extractor)
    paths = plan.shards[shard]
    rows: dict[str, dict[str, Any]] = {}
    t0 = last = time.perf_counter()
    for i, (path, feats) in enumerate(zip(paths, cache.features_many(paths, extractor)), 1):
        info = sf.info(path)
        rows[path] = {"audio_path": path, "audio_hash": audio_hash(path), "duration_s": float(info.duration),
                      "n_chunks": int(feats.shape[0]),
                      "frames": int(feats.shape[0]) * chunk_frames(extractor)}
        now = time.perf_counter()
        if now - last >= 1.0 or i == len(paths):
            last = now
            write_json_atomic(_progress_file(folder, shard), {"done": i, "total": len(paths), "finished": False,
                                                              "stats": cache.stats.as_dict()})
    result = {"done": len(paths), "total": len(paths), "finished": True, "stats": cache.stats.as_dict(),
              "seconds": time.perf_counter() - t0, "fingerprint": fp, "rows": rows}
    write_json_atomic(_progress_file(folder, shard), result)
    return {k: v for k, v in result.items() if k != "rows"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_shard(argv[0], int(argv[1]))
    return 0


# ------------------------------------------------------------------------------------------ the launcher side


@dataclass
class BuildSummary:
    clips: int
    seconds: float
    stats: dict[str, int]
    fingerprint: str
    manifests: list[str]
    shards: int

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


def _read(folder: Path, shard: int) -> dict[str, Any] | None:
    try:
        return json.loads(_progress_file(folder, shard).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_build(plan: BuildPlan, profile: Any, *, timeout_s: float = 24 * 3600) -> BuildSummary:
    """Run every shard on the profile's executor and wait, showing one progress bar; then write manifests."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sllm_lib.errors import StageFailedError

    folder = Path(plan.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(plan.shards)):
        _progress_file(folder, i).unlink(missing_ok=True)
    plan_path = folder / "plan.json"
    plan_path.write_text(plan.to_json(), encoding="utf-8")
    total = sum(len(s) for s in plan.shards)
    t0 = time.perf_counter()
    handles = _start(plan_path, plan, profile)
    interactive = sys.stderr.isatty()
    last_line = 0.0
    with Progress(TextColumn("cache build"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not interactive) as bar:
        task = bar.add_task("build", total=total)
        while True:
            states = [_read(folder, i) for i in range(len(plan.shards))]
            done = sum(s["done"] for s in states if s)
            bar.update(task, completed=done)
            if not interactive and time.perf_counter() - last_line >= 10:
                last_line = time.perf_counter()
                log.info("cache build: %d/%d clips, %.1f clips/s", done, total, done / max(last_line - t0, 1e-9))
            failed = [name for name, h in handles if _failed(h)]
            if failed:
                _cancel(handles)
                raise StageFailedError(f"cache build: shard(s) {', '.join(failed)} failed; see {folder}")
            if all(s and s.get("finished") for s in states):
                break
            if time.perf_counter() - t0 > timeout_s:
                _cancel(handles)
                raise StageFailedError(f"cache build: not finished after {timeout_s:.0f} s")
            time.sleep(0.5)
    seconds = time.perf_counter() - t0
    states = [_read(folder, i) or {} for i in range(len(plan.shards))]
    stats: dict[str, int] = {}
    rows: dict[str, dict[str, Any]] = {}
    for s in states:
        for k, v in s.get("stats", {}).items():
            stats[k] = stats.get(k, 0) + int(v)
        rows.update(s.get("rows", {}))
    fp = states[0].get("fingerprint", "")
    from sllm_lib.cache.store import FeatureCache

    cache = FeatureCache(**plan.cache)
    manifests = [cache.write_manifest(name, fp, [rows[p] for p in paths if p in rows])
                 for name, paths in plan.datasets.items()]
    return BuildSummary(clips=total, seconds=seconds, stats=stats, fingerprint=fp, manifests=manifests,
                        shards=len(plan.shards))


def _start(plan_path: Path, plan: BuildPlan, profile: Any) -> list[tuple[str, Any]]:
    if profile.kind == "local":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per builder
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        out = []
        for i in range(len(plan.shards)):
            logf = open(Path(plan.folder) / f"shard-{i:04d}.log", "w", encoding="utf-8")
            proc = subprocess.Popen([sys.executable, "-m", "launch.cache_build", str(plan_path), str(i)], env=env,
                                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            logf.close()
            out.append((f"{i} (pid {proc.pid})", proc))
        return out
    if profile.kind == "slurm":
        from launch.slurm import _import_submitit

        submitit = _import_submitit()
        ex = submitit.AutoExecutor(folder=str(Path(plan.folder) / "slurm"), cluster="slurm",
                                   slurm_python=profile.python_command())
        params: dict[str, Any] = {"slurm_job_name": "sllm-cache-build", "timeout_min": profile.timeout_min,
                                  "cpus_per_task": profile.cpus_per_task, "nodes": 1, "tasks_per_node": 1,
                                  "slurm_array_parallelism": len(plan.shards)}
        for key, attr in (("slurm_partition", "partition"), ("slurm_account", "account"), ("slurm_qos", "qos")):
            if getattr(profile, attr):
                params[key] = getattr(profile, attr)
        if profile.mem_gb:
            params["mem_gb"] = profile.mem_gb
        if profile.setup:
            params["slurm_setup"] = list(profile.setup)
        ex.update_parameters(**params)
        jobs = ex.map_array(build_shard, [str(plan_path)] * len(plan.shards), list(range(len(plan.shards))))
        return [(j.job_id, j) for j in jobs]
    raise NotImplementedError(f"cache build on a {profile.kind!r} profile")


def _failed(handle: Any) -> bool:
    if isinstance(handle, subprocess.Popen):
        rc = handle.poll()
        return rc is not None and rc != 0
    state = handle.state
    return state in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def _cancel(handles: list[tuple[str, Any]]) -> None:
    for _, h in handles:
        try:
            if isinstance(h, subprocess.Popen):
                if h.poll() is None:
                    h.terminate()
            else:
                h.cancel()
        except Exception as exc:  # best effort: report and go on cancelling the others
            log.warning("cache build: could not cancel %s: %s", h, exc)


if __name__ == "__main__":
    sys.exit(main())
