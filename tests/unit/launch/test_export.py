"""`sllm export`: the folder teammates read, and the model card built from the lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launch.export import export_model, model_card


@pytest.fixture
def umask_022():
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def _merged_folder(root: Path) -> Path:
    """A merged model folder as the merge stage leaves it: safetensors writes its file 0600."""
    folder = root / "merged"
    (folder / "tokenizer_extra").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "manifest.json").write_text(json.dumps({"base_model": "tiny:llama", "dtype": "bfloat16",
                                                      "num_parameters": 10}))
    fd = os.open(folder / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"weights")
    os.close(fd)
    (folder / "tokenizer_extra" / "vocab.json").write_text("{}")
    os.chmod(folder / "tokenizer_extra", 0o700)
    return folder


def test_an_export_is_readable_by_teammates(tmp_path: Path, umask_022) -> None:
    out = tmp_path / "export"
    result = export_model(str(_merged_folder(tmp_path)), out, tracking_uri=f"sqlite:///{tmp_path}/none.db")
    assert result.folder == out.resolve()
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes == {".": 0o755, "model.safetensors": 0o644, "config.json": 0o644, "README.md": 0o644,
                     "sllm_manifest.json": 0o644, "tokenizer_extra": 0o755, "tokenizer_extra/vocab.json": 0o644}


def _lineage(evaluations: list[dict], usage: list | None = None):
    """A merge run on a text stage; `usage`: (merge, text) RunUsage figures, or none recorded."""
    from sllm_lib.tracking.lineage import LineageNode, ModelLineage

    merge_u, text_u = usage or (None, None)
    text = LineageNode(run_id="t" * 32, stage="text", kind="text_sft", status="FINISHED", spec_hash="h", usage=text_u)
    root = LineageNode(run_id="m" * 32, stage="merge", kind="merge", status="FINISHED", spec_hash="h",
                       upstream=[text], usage=merge_u)
    return ModelLineage(name="sllm-demo", version="1", alias="candidate", source="models:/m-1", pipeline_run_id="p" * 32,
                        root=root, evaluations=evaluations)


def test_card_carries_the_lineage_compute_and_cost(tmp_path: Path) -> None:
    from sllm_lib.tracking.lineage import RunUsage

    usage = (RunUsage("m" * 32, 0.05, 180.0, 0.0, 0.13, "USD"), RunUsage("t" * 32, 12.0, 5400.0, 4.0, 30.0, "USD"))
    card = model_card(_merged_folder(tmp_path), {}, _lineage([], usage), {}, None)
    assert "| text | text_sft | `" + "t" * 32 + "` | - | - | 12.0 |" in card
    assert "| merge | merge | `" + "m" * 32 + "` | - | - | 0.050 |" in card
    assert ("Compute: 12.1 GPU-hours over 2 stage runs (every attempt, requeues and sweep points included; 4.000 in "
            "interrupted attempts), 1.55 hours of wall time; cost 30.13 USD.") in card
    assert "Compute:" not in model_card(_merged_folder(tmp_path / "b"), {}, _lineage([]), {}, None)


# what an eval run of medical_speech carries: task/metric scores, their copies logged for the logged model
# (eval/SUITE/task/metric), the feature cache's counters and the throughput
SCORES = {"asr/cer": 0.1234, "asr/wer": 0.25, "speech_qa/rougeL": 0.31, "speech_qa/bleu": 0.058,
          "speech_qa/distinct_1": 0.5, "speech_qa/distinct_2": 0.6, "text_qa/rougeL": 0.41, "text_qa/bleu": 0.07,
          "text_qa/distinct_1": 0.7, "text_qa/distinct_2": 0.8, "text_qa/keyword_match": 0.9}
RUN_METRICS = {**SCORES, **{f"eval/medical_speech/{k}": v for k, v in SCORES.items()},
               "cache/bytes_read": 123456789.0, "cache/bytes_written": 2048.0, "cache/hits": 40.0,
               "data/padding_share": 0.2}


def _eval_rows(card: str) -> list[str]:
    section = card.split("## Evaluations", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith(("| suite", "| ---"))]


def test_card_evaluations_follow_the_suite_declared_metrics(tmp_path: Path) -> None:
    folder = _merged_folder(tmp_path)
    evaluations = [{"run_id": "e" * 32, "suite": "medical_speech", "status": "FINISHED", "date": "",
                    "metrics": RUN_METRICS},
                   {"run_id": "o" * 32, "suite": "medical_speech", "status": "FINISHED", "date": "2026-01-01",
                    "metrics": {"asr/cer": 0.9}}]  # older: not shown
    card = model_card(folder, {}, _lineage(evaluations), {}, None)
    rows = _eval_rows(card)
    assert [r.split(" | ")[1] for r in rows] == ["asr", "speech_qa", "text_qa"]  # every task, text QA too
    assert "cer 0.1234 (≥0, ↓)" in rows[0] and "wer 0.25 (≥0, ↓)" in rows[0]
    assert "bleu 0.058 (0-1, ↑)" in rows[1] and "distinct_2 0.6 (0-1, ↑)" in rows[1]
    assert "keyword_match 0.9 (0-1, ↑)" in rows[2] and "`" + "e" * 32 + "`" in rows[2]
    assert all("o" * 32 not in r for r in rows)
    section = "\n".join(rows)
    for noise in ("eval/medical_speech", "cache", "bytes", "padding", "123456789"):
        assert noise not in section
    assert section.count("cer ") == 1  # no duplicate of asr/cer


def test_card_without_a_loadable_suite_shows_only_registry_scores(tmp_path: Path) -> None:
    evaluations = [{"run_id": "e" * 32, "suite": "my_private_suite", "status": "FINISHED", "date": "2026-02-03",
                    "metrics": {"qa/rougeL": 0.5, "qa/bleu": 0.1, "eval/my_private_suite/qa/rougeL": 0.5,
                                "cache/bytes_read": 10.0, "cls/accuracy": 0.8}},
                   {"run_id": "f" * 32, "suite": "other", "status": "FAILED", "date": "", "metrics": {"x/cer": 1.0}}]
    rows = _eval_rows(model_card(_merged_folder(tmp_path), {}, _lineage(evaluations), {}, None))
    assert rows == [f"| my_private_suite | cls | accuracy 0.8 (0-1, ↑) | 2026-02-03 | `{'e' * 32}` |",
                    f"| my_private_suite | qa | bleu 0.1 (0-1, ↑), rougeL 0.5 (0-1, ↑) | 2026-02-03 | `{'e' * 32}` |"]
