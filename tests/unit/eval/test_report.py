"""eval.report: the HTML report, the Markdown summary and the atomic writer, on a hand-built NightlyResult."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eval.report import render_html, render_markdown, write_report
from eval.results import GateResult, ModelEval, NightlyResult, SampleScore, TrendPoint, WorstSample

SCRIPT = '<script>alert("xss")</script> & 혈압'
KOREAN_REF = "환자는 어제부터 흉통을 호소하였습니다"


def make_result() -> NightlyResult:
    """Two models, a gate in every status, several trends (one with a single point), Korean worst samples."""
    cand = ModelEval(
        role="candidate", name="sllm-ko-med", version="12", aliases=["candidate"], eval_run_id="run-cand-0012",
        source_run_id="train-0012",
        metrics={"asr_ko/cer": 0.142, "asr_ko/wer": 0.281, "summ_ko/rouge_l": 0.412, "qa_ko/exact_match": 0.655,
                 "qa_ko/f1": 0.71},
        samples={"asr_ko": [SampleScore(id="asr-001", reference=KOREAN_REF, prediction="환자는 어제 흉통을",
                                        scores={"cer": 0.3})]},
        samples_per_s=12.5,
    )
    champ = ModelEval(
        role="champion", name="sllm-ko-med", version="9", aliases=["champion"], eval_run_id="run-champ-0009",
        metrics={"asr_ko/cer": 0.118, "asr_ko/wer": 0.275, "summ_ko/rouge_l": 0.405, "qa_ko/exact_match": 0.61},
        samples_per_s=11.0, reused=True,
    )
    gates = [
        GateResult("asr_ko", "cer", "champion", champ.label, 0.142, 0.118, -0.024, -0.031, -0.017, 0.005, False,
                   "regression", 200),
        GateResult("asr_ko", "wer", "champion", champ.label, 0.281, 0.275, -0.006, -0.019, 0.004, 0.005, False,
                   "within_noise", 200),
        GateResult("summ_ko", "rouge_l", "champion", champ.label, 0.412, 0.405, 0.007, -0.004, 0.018, 0.01, True,
                   "pass", 150),
        GateResult("qa_ko", "exact_match", "champion", champ.label, 0.655, 0.61, 0.045, 0.02, 0.07, 0.01, True,
                   "improved", 300),
        GateResult("qa_ko", "f1", "champion", champ.label, 0.71, None, None, None, None, 0.01, True,
                   "no_baseline", 300),
        GateResult("qa_ko", "accuracy", "champion", champ.label, 0.60, 0.62, -0.02, -0.05, 0.01, 0.012, True,
                   "insufficient", 12, tier="supporting", threshold_spec="2%", min_items=20),
        GateResult("summ_ko", "exact_match", "champion", champ.label, 0.50, 0.60, -0.10, -0.2, -0.01, 0.0, True,
                   "regression", 80, tier="advisory", test="mcnemar", p_value=0.0123, wins=3, losses=11),
    ]
    trends = {
        "asr_ko/cer": [TrendPoint("2026-11-14", "9", 0.121), TrendPoint("2026-11-15", "10", 0.125),
                       TrendPoint("2026-11-16", "10", 0.124), TrendPoint("2026-11-18", "11", 0.131),
                       TrendPoint("2026-11-20", "12", 0.142)],
        "summ_ko/rouge_l": [TrendPoint("2026-11-16", "10", 0.398), TrendPoint("2026-11-18", "11", 0.401),
                            TrendPoint("2026-11-20", "12", 0.412)],
        "qa_ko/f1": [TrendPoint("2026-11-20", "12", 0.71)],
    }
    worst = [
        WorstSample("asr_ko", "cer", "asr-001", KOREAN_REF, "환자는 어제 흉통을", KOREAN_REF, 0.30, 0.0, 0.30),
        WorstSample("asr_ko", "cer", "asr-017", "혈압은 백사십에 구십입니다", SCRIPT, "혈압은 백사십에 구십입니다", 0.9,
                    0.0, 0.9),
        WorstSample("summ_ko", "rouge_l", "sum-004", "두통 및 발열로 내원 | 해열제 처방", "두통으로 내원", "두통 및 발열로 내원",
                    0.31, 0.66, 0.35),
    ]
    return NightlyResult(
        date="2026-11-20", suite="medical_ko_v2", registered_model="sllm-ko-med", models=[cand, champ], gates=gates,
        trends=trends, worst_samples=worst, regression=True, promoted=False,
        notes=["asr_ko/cer regressed against the champion", "필수 노트: 한국어 메모 & <태그>"],
        confidence=0.95, nightly_run_id="nightly-2026-11-20", verdict="no_go",
        reasons=["asr_ko/cer (critical) against the champion regressed: -0.024, allowed -0.005"],
        policy=["tiers: qa_ko/accuracy: supporting; others critical (or the suite's tier)",
                "at least 20 paired samples per gate"],
    )


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, f"section #{sid} missing"
    return m.group(1)


@pytest.fixture(scope="module")
def result() -> NightlyResult:
    return make_result()


@pytest.fixture(scope="module")
def page(result: NightlyResult) -> str:
    return render_html(result)


def test_html_is_one_document_with_every_section(page: str):
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    for sid in ("summary", "models", "gates", "trends", "tasks", "worst"):
        assert page.count(f'id="{sid}"') == 1, sid
    assert "NanumGothic" in page and "Noto Sans CJK KR" in page


def test_verdict_banner(page: str, result: NightlyResult):
    summary = _section(page, "summary")
    assert 'class="verdict no-go"' in summary and "NO-GO" in summary
    assert result.date in summary and result.suite in summary and result.registered_model in summary
    assert "not promoted" in summary
    assert "한국어 메모 &amp; &lt;태그&gt;" in summary  # notes escaped
    assert '<ul class="reasons" data-verdict="no-go"><li>asr_ko/cer (critical) against the champion regressed' \
        in summary  # the verdict says why
    assert "Gate policy" in summary and "at least 20 paired samples per gate" in summary

    import dataclasses

    ok = render_html(dataclasses.replace(result, regression=False, promoted=True, verdict="go", reasons=[]))
    assert 'class="verdict go"' in _section(ok, "summary") and "champion promoted" in ok
    assert 'class="verdict no-go"' not in ok and "<title>GO ·" in ok


def test_models_table(page: str):
    models = _section(page, "models")
    assert models.count("<tr class=\"role-") == 2
    for text in ("candidate", "champion", "sllm-ko-med v12 @candidate", "run-cand-0012", "run-champ-0009", "12.50",
                 "reused", "fresh"):
        assert text in models, text


def test_gates_table_has_every_status_and_highlights_regressions(page: str):
    gates = _section(page, "gates")
    rows = re.findall(r'<tr class="gate status-(\w+) tier-(\w+)"', gates)
    assert sorted(s for s, _ in rows) == sorted(["regression", "within_noise", "pass", "improved", "no_baseline",
                                                 "insufficient", "regression"])
    assert rows[0] == ("regression", "critical")  # critical first, worst first
    assert [t for _, t in rows] == ["critical"] * 5 + ["supporting", "advisory"]
    for status in ("regression", "within_noise", "pass", "improved", "no_baseline", "insufficient"):
        assert f'<span class="status {status}">' in gates
    assert "McNemar p=0.0123 (+3/−11)" in gates and "bootstrap" in gates  # the paired test of each row
    assert "2% = 0.0120" in gates  # a relative threshold with its value in metric units
    assert "95% CI" in gates
    assert "[−0.0310, −0.0170]" in gates  # the regressed gate's interval
    assert "0.1420" in gates and "0.1180" in gates


def test_one_trend_plot_per_key(page: str, result: NightlyResult):
    trends = _section(page, "trends")
    keys = re.findall(r'<figure class="trend-plot" data-metric="([^"]+)">', trends)
    assert keys == list(result.trends)
    figures = trends.split('<figure class="trend-plot"')[1:]
    for fig in figures:
        assert "<svg" in fig and "</svg>" in fig
    assert "v12" in trends and "v9" in trends  # version annotations (v9 on the first point of asr_ko/cer)
    single = figures[list(result.trends).index("qa_ko/f1")]
    assert "<use " in single or "<circle" in single or "<path" in single  # a marker even for one point


def test_task_bars_one_chart_per_task(page: str):
    tasks = _section(page, "tasks")
    assert re.findall(r'<figure class="task-bars" data-task="([^"]+)">', tasks) == ["asr_ko", "summ_ko", "qa_ko"]
    assert tasks.count("<svg") == 3


def test_svg_ids_are_unique_across_plots(page: str):
    ids = re.findall(r'\bid="([^"]+)"', page)
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, sorted(dupes)[:10]
    for ref in set(re.findall(r'(?:href="#|url\(#)([^")]+)', page)):
        assert ref in ids or ref in ("summary", "models", "gates", "trends", "tasks", "worst"), ref


def test_worst_samples_escaped_and_korean(page: str):
    worst = _section(page, "worst")
    assert worst.count('<tr class="worst"') == 3
    assert KOREAN_REF in worst and "혈압은 백사십에 구십입니다" in worst
    assert "&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt; &amp; " in worst
    assert "<script" not in page.lower()  # no live script anywhere: the report has no JS at all
    assert "두통 및 발열로 내원 | 해열제 처방" in worst
    assert 'class="diff-add"' in worst


def test_no_external_resources(page: str):
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', page, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", page, re.I)
    assert "<!DOCTYPE svg" not in page and "<?xml" not in page
    assert "<link" not in page.lower() and "@import" not in page


def test_render_is_deterministic(page: str, result: NightlyResult):
    assert render_html(result) == page


def test_empty_result_renders():
    empty = NightlyResult(date="2026-11-20", suite="s", registered_model="m", trends={"a/b": []})
    page = render_html(empty)
    for sid in ("summary", "models", "gates", "trends", "tasks", "worst"):
        assert f'id="{sid}"' in page
    assert 'class="verdict inconclusive"' in page and "INCONCLUSIVE" in page  # nothing gated is not a GO
    assert page.count('class="trend-plot"') == 1
    md = render_markdown(empty)
    assert "INCONCLUSIVE" in md and "GO**" not in md


def test_a_first_night_is_not_a_go(result: NightlyResult):
    """A night decided INCONCLUSIVE (no champion yet): the title, the banner, its reasons and the summary say so."""
    import dataclasses

    first = dataclasses.replace(result, regression=False, promoted=False, verdict="inconclusive",
                                reasons=["no gate compared anything (no champion yet, or no paired samples): "
                                         "nothing was gated"],
                                gates=[dataclasses.replace(g, status="no_baseline") for g in result.gates])
    page, md = render_html(first), render_markdown(first)
    assert "<title>INCONCLUSIVE" in page and 'class="verdict inconclusive"' in page
    assert "no gate compared anything" in _section(page, "summary")
    assert "INCONCLUSIVE" in md.splitlines()[2] and "no gate compared anything" in md
    old = NightlyResult.from_dict({k: v for k, v in first.to_dict().items() if k not in ("verdict", "reasons")})
    assert old.verdict == "inconclusive" and old.reasons == []  # a result.json from before verdicts still loads
    assert NightlyResult.from_dict({**result.to_dict(), "verdict": None}).verdict == "no_go"


def test_markdown_summary(result: NightlyResult):
    md = render_markdown(result)
    assert "NO-GO" in md.splitlines()[2]
    assert "- asr_ko/cer (critical) against the champion regressed" in md  # the reasons
    gate_rows = [l for l in md.splitlines() if l.startswith("| critical | asr_ko | cer (≥0) |")]
    assert len(gate_rows) == 1 and "**regression**" in gate_rows[0] and "| bootstrap |" in gate_rows[0]
    assert "| critical | qa_ko | f1 |" in md  # seven gates: all shown
    assert "| advisory | summ_ko | exact_match (0-1) |" in md and "McNemar p=0.0123" in md
    assert "### Gate policy" in md
    assert "### Worst samples" in md and "asr-017" in md
    assert "\\<script\\>" in md and "<script>" not in md
    assert "\\|" in md  # a pipe inside a cell is escaped
    assert "sllm-ko-med v12 @candidate" in md and "run-champ-0009" in md


def test_markdown_hides_passing_gates_when_many(result: NightlyResult):
    many = NightlyResult.from_dict(result.to_dict())
    for i in range(10):
        many.gates.append(GateResult(f"extra{i}", "acc", "champion", "x", 0.5, 0.5, 0.0, -0.01, 0.01, 0.01, True,
                                     "pass", 10))
    md = render_markdown(many)
    assert "extra3" not in md and "| summ_ko | rouge_l |" not in md  # passing gates hidden
    assert "| critical | asr_ko | cer (≥0) |" in md and "passing gate(s) not shown" in md


def test_write_report_roundtrip_and_idempotent(tmp_path: Path, result: NightlyResult):
    out = tmp_path / "nested" / "report"
    paths = write_report(result, out)
    assert set(paths) == {"html", "markdown", "json"}
    assert {p.name for p in paths.values()} == {"report.html", "summary.md", "result.json"}
    raw = paths["json"].read_text(encoding="utf-8")
    assert KOREAN_REF in raw  # ensure_ascii=False
    assert NightlyResult.from_dict(json.loads(raw)) == result
    assert paths["html"].read_text(encoding="utf-8") == render_html(result)
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(result)

    first = {k: p.read_bytes() for k, p in paths.items()}
    again = write_report(result, out)
    assert again == paths and {k: p.read_bytes() for k, p in again.items()} == first
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "result.json", "summary.md"]  # no temp files

    changed = NightlyResult.from_dict(result.to_dict())
    changed.regression, changed.verdict = False, "go"
    write_report(changed, out)
    assert 'class="verdict go"' in paths["html"].read_text(encoding="utf-8")
    assert NightlyResult.from_dict(json.loads(paths["json"].read_text(encoding="utf-8"))).regression is False


def test_write_report_failure_keeps_previous(tmp_path: Path, result: NightlyResult, monkeypatch):
    paths = write_report(result, tmp_path)
    before = paths["html"].read_bytes()
    import eval.report as report

    def boom(_result):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "render_html", boom)
    with pytest.raises(RuntimeError):
        report.write_report(result, tmp_path)
    assert paths["html"].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "result.json", "summary.md"]


def test_reports_show_each_metric_scale_from_the_registry() -> None:
    """BLEU beside ROUGE: both on the registry's 0-1 scale, and the reports say so."""
    cand = ModelEval(role="candidate", name="m", version="2", aliases=[], eval_run_id="r2",
                     metrics={"text_qa/bleu": 0.058, "text_qa/rougeL": 0.30, "asr/cer": 0.12})
    gates = [GateResult("text_qa", "bleu", "champion", "m v1", 0.058, 0.06, -0.002, -0.01, 0.005, 0.01, True, "pass",
                        10),
             GateResult("asr", "cer", "champion", "m v1", 0.12, 0.1, -0.02, -0.03, -0.01, 0.01, False, "regression",
                        10),
             GateResult("text_qa", "my_custom", "champion", "m v1", 1.0, 1.0, 0.0, None, None, 0.01, True, "pass", 10)]
    result = NightlyResult(date="2026-11-20", suite="medical_speech", registered_model="m", models=[cand],
                           gates=gates, trends={}, worst_samples=[], regression=True, promoted=False, notes=[],
                           confidence=0.95, nightly_run_id="n")
    md = render_markdown(result)
    assert "| text_qa | bleu (0-1) |" in md and "| asr | cer (≥0) |" in md
    assert "| text_qa | my_custom |" in md  # not a registry metric: no invented scale
    gates_html = _section(render_html(result), "gates")
    assert "bleu (0-1)" in gates_html and "cer (≥0)" in gates_html


def test_reports_name_the_normaliser_of_each_cer_wer_number() -> None:
    cand = ModelEval(role="candidate", name="m", version="2", metrics={"asr/cer": 0.12, "asr/wer": 0.2,
                                                                     "asr_en/wer": 0.1})
    normalizers = {"asr/cer": "korean-v1", "asr/wer": "korean-v1", "asr_en/wer": "whisper-english-v1"}
    result = NightlyResult(date="2026-11-20", suite="s", registered_model="m", models=[cand], normalizers=normalizers)
    assert NightlyResult.from_dict(json.loads(json.dumps(result.to_dict()))).normalizers == normalizers
    md = render_markdown(result)
    assert "- korean-v1: asr/cer, asr/wer\n- whisper-english-v1: asr_en/wer" in md
    summary = _section(render_html(result), "summary")
    assert "<dt>Text normaliser</dt><dd>korean-v1: asr/cer, asr/wer<br>whisper-english-v1: asr_en/wer</dd>" in summary
    old = NightlyResult.from_dict({k: v for k, v in result.to_dict().items() if k != "normalizers"})
    assert old.normalizers == {} and "Text normaliser" not in render_markdown(old)
