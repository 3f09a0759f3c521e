"""Render a `NightlyResult` as a self-contained HTML report, a short Markdown summary and JSON.

    render_html(result) -> str         one HTML file: inline CSS, inline SVG plots, no scripts, no remote URLs
    render_markdown(result) -> str     verdict, non-passing gates, worst samples and models, for chat or email
    write_report(result, out_dir)      report.html + summary.md + result.json, each written atomically

Plots are drawn by matplotlib (imported lazily, `Figure` objects only, no pyplot state) as SVG with text
kept as text, so the browser draws it with the page's Korean-capable font stack. Without matplotlib the
report still renders, with a note in place of each plot.
"""

from __future__ import annotations

import difflib
import html
import io
import json
import math
import os
import re
import warnings
from collections import Counter
from datetime import date as _date
from pathlib import Path
from typing import Any

from eval.results import VERDICT_LABELS, GateResult, ModelEval, NightlyResult, TrendPoint, normalizer_lines
from sllm_lib.files import write_text_atomic
from sllm_lib.metrics.registry import metric_scale
from sllm_lib.usage import format_gpu_hours

__all__ = ["render_html", "render_markdown", "write_report", "STATUS_ORDER", "STATUS_LABELS"]

STATUS_ORDER = ("regression", "within_noise", "insufficient", "pass", "improved", "no_baseline")
"""Gate statuses, worst first: tables list gates in this order."""

STATUS_LABELS = {
    "regression": "regression",
    "within_noise": "within noise",
    "pass": "pass",
    "improved": "improved",
    "insufficient": "too few samples",
    "no_baseline": "no baseline",
}
TIER_ORDER = ("critical", "supporting", "advisory")
VERDICT_CLASS = {"go": "go", "no_go": "no-go", "inconclusive": "inconclusive"}
VERDICT_MD = {"go": "✅ **GO**", "no_go": "❌ **NO-GO**", "inconclusive": "➖ **INCONCLUSIVE**"}

FONT_STACK = ('"Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "NanumBarunGothic", "Apple SD Gothic Neo", '
              '"Malgun Gothic", "Segoe UI", "Helvetica Neue", Arial, sans-serif')

# one colour per model role; further models of the same role reuse the palette below
ROLE_COLORS = {"candidate": "#2563eb", "champion": "#d97706", "latest": "#059669"}
PALETTE = ("#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#64748b")

_DIFF_MAX_CHARS = 2000  # longer texts are shown without the character diff (SequenceMatcher is quadratic)


# ----------------------------------------------------------------------------------------------- formatting

def _e(value: Any) -> str:
    """HTML-escape any value as text (quotes too, so the result is also safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _num(x: float | None, signed: bool = False) -> str:
    """A metric value for a table: 4 decimals for small values, fewer for large ones; '—' for None."""
    if x is None:
        return "—"
    if not isinstance(x, (int, float)):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return ("+" if signed and x > 0 else "") + ("∞" if x > 0 else "−∞")
    a = abs(x)
    digits = 0 if a >= 1000 else 2 if a >= 10 else 4
    s = f"{x:+,.{digits}f}" if signed else f"{x:,.{digits}f}"
    return s.replace("-", "−")


def _pct(conf: float) -> str:
    p = conf * 100
    return f"{p:.0f}%" if abs(p - round(p)) < 1e-9 else f"{p:g}%"


def _model_color(m: ModelEval, index: int, used: Counter[str]) -> str:
    used[m.role] += 1
    if m.role in ROLE_COLORS and used[m.role] == 1:
        return ROLE_COLORS[m.role]
    return PALETTE[(index + 3) % len(PALETTE)]


def _split_key(key: str) -> tuple[str, str]:
    """'task/metric' -> (task, metric); a task may itself contain '/', a metric does not."""
    task, sep, metric = key.rpartition("/")
    return (task, metric) if sep else (key, "")


def _scaled(metric: str) -> str:
    """'bleu (0-1)': a metric name with the scale the registry declares for it (as is when it declares none)."""
    scale = metric_scale(metric)
    return f"{metric} ({scale})" if scale else metric


def _sorted_gates(gates: list[GateResult]) -> list[GateResult]:
    """Tier first (critical, supporting, advisory), then status worst first."""
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    tier = {t: i for i, t in enumerate(TIER_ORDER)}
    return sorted(gates, key=lambda g: (tier.get(g.tier, len(tier)), rank.get(g.status, len(rank)), g.task, g.metric,
                                        g.baseline))


def _threshold(g: GateResult) -> str:
    """The allowed worsening in metric units, with the relative form it came from ("5% = 0.0150")."""
    if g.threshold_spec.endswith("%"):
        return f"{g.threshold_spec} = {_num(g.threshold)}" if _finite(g.threshold) else g.threshold_spec
    return _num(g.threshold)


def _evidence(g: GateResult) -> str:
    """The paired test that decided, as a short text: McNemar's p and discordant pairs, or the bootstrap."""
    if g.test == "mcnemar" and g.p_value is not None:
        return f"McNemar p={g.p_value:.3g} (+{g.wins}/−{g.losses})"
    return "bootstrap" if g.ci_low is not None else "—"


def _direction(result: NightlyResult, task: str, metric: str) -> bool | None:
    """higher_is_better for a task/metric, from the gates; None when no gate covers it."""
    return next((g.higher_is_better for g in result.gates if g.task == task and g.metric == metric), None)


# ----------------------------------------------------------------------------------------------- plots

class _PlotsUnavailable(Exception):
    pass


def _mpl():
    """matplotlib pieces, imported on first use; raises _PlotsUnavailable when it is not installed."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib comes with mlflow
        raise _PlotsUnavailable(str(exc)) from exc
    return matplotlib, Figure


_RC = {
    "svg.fonttype": "none",      # text stays text: the browser renders it with the page fonts (Hangul included)
    "svg.hashsalt": "sllm-report",  # deterministic ids; made unique per plot by _svg_of
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#94a3b8",
    "axes.labelcolor": "#334155",
    "xtick.color": "#475569",
    "ytick.color": "#475569",
    "axes.grid": True,
    "grid.color": "#e2e8f0",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
}

_SVG_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.S)
_SVG_ID = re.compile(r'\bid="([^"]+)"')


def _svg_of(fig: Any, uid: str) -> str:
    """The figure as an inline <svg> element: no XML prolog/DOCTYPE, ids prefixed with `uid` so that
    several plots in one page never share an id (clip paths and markers are referenced by id)."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from")  # Hangul: the browser draws it
        fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.05,
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = _SVG_PROLOG.sub("", buf.getvalue(), count=1)
    ids = set(_SVG_ID.findall(svg))
    if ids:
        svg = _SVG_ID.sub(lambda m: f'id="{uid}-{m.group(1)}"', svg)
        svg = re.sub(r'(href="#|url\(#)([^")]+)',
                     lambda m: m.group(1) + (f"{uid}-{m.group(2)}" if m.group(2) in ids else m.group(2)), svg)
    return svg.replace("<svg ", '<svg role="img" ', 1).strip()


def _dates(points: list[TrendPoint]) -> tuple[list[Any], bool]:
    """x values for a trend: real dates when every point parses as an ISO date, else positions."""
    try:
        return [_date.fromisoformat(p.date[:10]) for p in points], True
    except (TypeError, ValueError):
        return list(range(len(points))), False


def _trend_svg(key: str, points: list[TrendPoint], result: NightlyResult, uid: str) -> str:
    matplotlib, Figure = _mpl()
    task, metric = _split_key(key)
    higher = _direction(result, task, metric)
    xs, are_dates = _dates(points)
    ys = [p.value if _finite(p.value) else float("nan") for p in points]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.6, 2.5), dpi=100)
        ax = fig.add_subplot()
        ax.plot(xs, ys, color=ROLE_COLORS["candidate"], linewidth=1.8, marker="o", markersize=4.5, zorder=3,
                label="candidate (nightly)")
        if points and _finite(ys[-1]):  # today's point stands out
            ax.plot([xs[-1]], [ys[-1]], linestyle="none", marker="o", markersize=8, markerfacecolor="white",
                    markeredgecolor=ROLE_COLORS["candidate"], markeredgewidth=2, zorder=4)
        champ = result.model("champion")
        if champ is not None and _finite(champ.metrics.get(key)):
            ax.axhline(champ.metrics[key], color=ROLE_COLORS["champion"], linestyle="--", linewidth=1.2, zorder=2,
                       label=f"champion v{champ.version}")
        # annotate the version where it changes (and the last point) so long series stay readable
        prev = None
        for i, (x, y, p) in enumerate(zip(xs, ys, points)):
            if not _finite(y) or (p.version == prev and i != len(points) - 1):
                prev = p.version
                continue
            prev = p.version
            ax.annotate(f"v{p.version}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=8.5, color="#1e3a8a")
        title = key + ("" if higher is None else ("  (↑ better)" if higher else "  (↓ better)"))
        ax.set_title(title, fontsize=11, loc="left", color="#0f172a")
        ax.margins(x=0.08, y=0.25)
        if are_dates:
            from matplotlib.dates import AutoDateLocator, DateFormatter

            locator = AutoDateLocator(minticks=2, maxticks=6)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(DateFormatter("%m-%d"))
            if len(xs) == 1:  # a single date: give the axis some width so the marker sits in the middle
                import datetime as _dt

                ax.set_xlim(xs[0] - _dt.timedelta(days=1), xs[0] + _dt.timedelta(days=1))
        else:
            ax.set_xticks(list(range(len(points))), [p.date for p in points], rotation=30, ha="right")
        ax.set_ylabel(_scaled(metric) if metric else key)
        if ax.get_legend_handles_labels()[0] and (champ is not None and _finite(champ.metrics.get(key))):
            ax.legend(fontsize=8, frameon=False, loc="best")
        return _svg_of(fig, uid)


def _task_svg(task: str, metrics: list[str], models: list[ModelEval], colors: list[str], result: NightlyResult,
              uid: str) -> str:
    """One figure per task: a small panel per metric (each on its own scale), a bar per model."""
    matplotlib, Figure = _mpl()
    n = len(metrics)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(min(2.3 * n + 0.6, 11.5), 2.7), dpi=100)
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            key = f"{task}/{metric}"
            values = [m.metrics.get(key) for m in models]
            heights = [v if _finite(v) else 0.0 for v in values]
            xs = list(range(len(models)))
            bars = ax.bar(xs, heights, color=colors, width=0.7, zorder=3)
            top = max((abs(h) for h in heights), default=0.0) or 1.0
            for b, v in zip(bars, values):
                txt = _num(v) if v is not None else "n/a"
                h = b.get_height()
                ax.text(b.get_x() + b.get_width() / 2, h + (0.02 * top if h >= 0 else -0.02 * top), txt,
                        ha="center", va="bottom" if h >= 0 else "top", fontsize=7, color="#0f172a")
            higher = _direction(result, task, metric)
            ax.set_title(_scaled(metric) + ("" if higher is None else (" ↑" if higher else " ↓")), fontsize=9.5)
            ax.set_xticks(xs, [m.role for m in models], fontsize=7.5)
            ax.grid(axis="x", visible=False)
            ax.margins(y=0.18)
        fig.suptitle(task, x=0.01, ha="left", fontsize=10.5, color="#0f172a")
        fig.tight_layout()
        return _svg_of(fig, uid)


def _plot_or_note(fn, *args) -> str:
    try:
        return fn(*args)
    except _PlotsUnavailable as exc:
        return f'<p class="empty">plot unavailable: matplotlib is not installed ({_e(exc)})</p>'


# ----------------------------------------------------------------------------------------------- HTML parts

_CSS = """
:root { --fg:#0f172a; --muted:#64748b; --line:#e2e8f0; --bg:#f8fafc; --card:#ffffff;
  --reg:#b91c1c; --reg-bg:#fef2f2; --noise:#b45309; --noise-bg:#fffbeb; --pass:#15803d; --pass-bg:#f0fdf4;
  --imp:#1d4ed8; --imp-bg:#eff6ff; --nob:#475569; --nob-bg:#f1f5f9; }
* { box-sizing: border-box; }
html { font-family: %(font)s; font-size: 14px; color: var(--fg); background: var(--bg); line-height: 1.45;
  -webkit-text-size-adjust: 100%%; }
body { margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; }
header.top { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; margin-bottom: 6px; }
header.top h1 { font-size: 22px; margin: 0; }
header.top .sub { color: var(--muted); }
nav.toc { margin: 4px 0 14px; font-size: 13px; }
nav.toc a { color: var(--imp); text-decoration: none; margin-right: 14px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px 16px;
  margin: 14px 0; }
section > h2 { font-size: 16px; margin: 0 0 10px; }
.verdict { border-radius: 8px; padding: 12px 16px; font-weight: 700; font-size: 20px; letter-spacing: .02em;
  display: flex; align-items: center; gap: 14px; flex-wrap: wrap; }
.verdict.no-go { background: var(--reg); color: #fff; }
.verdict.go { background: var(--pass); color: #fff; }
.verdict.inconclusive { background: var(--noise); color: #fff; }
ul.reasons { margin: 8px 0 0; padding-left: 20px; }
.tier { font-size: 12px; font-weight: 600; }
.tier.supporting { color: var(--noise); }
.tier.advisory { color: var(--muted); font-weight: 400; }
tr.tier-advisory td { opacity: .75; }
.verdict .detail { font-weight: 400; font-size: 14px; opacity: .95; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 12px 0 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.counts span { margin-right: 8px; }
ul.notes { margin: 10px 0 0; padding-left: 20px; }
table { border-collapse: collapse; width: 100%%; font-size: 13px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f1f5f9; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.mono { white-space: nowrap; }
td.mono, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
tr.status-regression td { background: var(--reg-bg); }
tr.status-regression td:first-child { box-shadow: inset 4px 0 0 var(--reg); }
tr.status-within_noise td:first-child { box-shadow: inset 4px 0 0 var(--noise); }
.status { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600;
  white-space: nowrap; }
.status.regression { background: var(--reg); color: #fff; }
.status.within_noise { background: var(--noise-bg); color: var(--noise); border: 1px solid #fcd34d; }
.status.pass { background: var(--pass-bg); color: var(--pass); border: 1px solid #86efac; }
.status.improved { background: var(--imp-bg); color: var(--imp); border: 1px solid #93c5fd; }
.status.no_baseline { background: var(--nob-bg); color: var(--nob); border: 1px solid #cbd5e1; }
.status.insufficient { background: var(--noise-bg); color: var(--nob); border: 1px dashed #94a3b8; }
.ci { color: var(--muted); }
svg.cibar { vertical-align: middle; margin-left: 6px; }
.muted { color: var(--muted); }
.empty { color: var(--muted); font-style: italic; margin: 4px 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
figure { margin: 0; }
figure.trend-plot, figure.task-bars { border: 1px solid var(--line); border-radius: 8px; padding: 6px; background: #fff; }
figure svg { max-width: 100%%; height: auto; display: block; margin: 0 auto; }
figure svg text { font-family: %(font)s !important; }
.bars { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.bars figure.task-bars { flex: 0 1 auto; max-width: 100%%; }
figcaption { font-size: 12px; color: var(--muted); padding: 2px 4px 0; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; font-size: 12px; margin-bottom: 8px; }
.legend i { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
td.text { max-width: 320px; word-break: break-word; white-space: pre-wrap; }
.diff-add { background: #fee2e2; color: #991b1b; border-radius: 2px; }
del.diff-del { background: #fef3c7; color: #92400e; text-decoration: line-through; border-radius: 2px; }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""


def _summary_html(result: NightlyResult) -> str:
    verdict_cls = VERDICT_CLASS.get(result.verdict, "inconclusive")
    verdict_txt = VERDICT_LABELS.get(result.verdict, result.verdict)
    n_reg = sum(g.status == "regression" for g in result.gates)
    detail = (f"{n_reg} gate{'s' if n_reg != 1 else ''} regressed" if n_reg else "no gate regressed")
    detail += "; champion promoted" if result.promoted else "; champion not promoted"
    counts = Counter(g.status for g in result.gates)
    count_html = " ".join(
        f'<span class="status {_e(s)}">{counts[s]} {_e(STATUS_LABELS[s])}</span>' for s in STATUS_ORDER if counts[s]
    ) or '<span class="muted">no gates</span>'
    cand, champ = result.model("candidate"), result.model("champion")
    facts = [
        ("Date", _e(result.date)),
        ("Suite", _e(result.suite)),
        ("Registered model", f'<span class="mono">{_e(result.registered_model)}</span>'),
        ("Candidate", _e(cand.label) if cand else '<span class="muted">—</span>'),
        ("Champion", _e(champ.label) if champ else '<span class="muted">none</span>'),
        ("Promoted", "yes — the candidate is now the champion" if result.promoted else "no"),
        ("Gates", f'<span class="counts">{count_html}</span>'),
        ("Confidence", _e(_pct(result.confidence))),
    ]
    if result.policy:
        facts.append(("Gate policy", "<br>".join(_e(line) for line in result.policy)))
    if result.normalizers:
        facts.append(("Text normaliser", "<br>".join(_e(line) for line in normalizer_lines(result.normalizers))))
    if result.nightly_run_id:
        facts.append(("Nightly run", f'<span class="mono">{_e(result.nightly_run_id)}</span>'))
    reasons = ""
    if result.reasons:
        reasons = ('<ul class="reasons" data-verdict="' + verdict_cls + '">'
                   + "".join(f"<li>{_e(r)}</li>" for r in result.reasons) + "</ul>")
    notes = ""
    if result.notes:
        notes = '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in result.notes) + "</ul>"
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<div class="verdict {verdict_cls}" data-verdict="{verdict_cls}"><span>{verdict_txt}</span>'
        f'<span class="detail">{_e(detail)}</span></div>{reasons}'
        '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
        f"{notes}</section>"
    )


def _models_html(result: NightlyResult) -> str:
    if not result.models:
        return '<section id="models"><h2>Models evaluated</h2><p class="empty">No model was evaluated.</p></section>'
    rows = []
    for m in result.models:
        n_samples = sum(len(v) for v in m.samples.values())
        rows.append(
            f'<tr class="role-{_e(m.role)}"><td>{_e(m.role)}</td><td>{_e(m.label)}</td>'
            f'<td class="mono">{_e(m.eval_run_id or "—")}</td><td class="mono">{_e(m.source_run_id or "—")}</td>'
            f'<td class="num">{_num(m.samples_per_s) if m.samples_per_s is not None else "—"}</td>'
            f'<td class="num">{n_samples}</td>'
            f'<td>{"reused" if m.reused else "fresh"}</td>'
            f'<td class="num">{_e(format_gpu_hours(m.gpu_hours)) if m.gpu_hours is not None else "—"}</td>'
            f'<td class="num">{_e(m.cost or "—")}</td></tr>'
        )
    return (
        '<section id="models"><h2>Models evaluated</h2><table><thead><tr><th>Role</th><th>Model</th>'
        '<th>Eval run</th><th>Source run</th><th class="num">Samples/s</th><th class="num">Samples</th>'
        '<th>Results</th><th class="num" title="GPU-hours along the lineage of the run that produced it: every '
        'attempt, requeues and sweep points">Training GPU-hours</th><th class="num">Training cost</th></tr></thead>'
        '<tbody>' + "".join(rows) + "</tbody></table></section>"
    )


def _ci_bar(g: GateResult) -> str:
    """A tiny inline SVG: the improvement's CI against zero (grey line) and -threshold (red dashed)."""
    if not (_finite(g.improvement) and _finite(g.ci_low) and _finite(g.ci_high)):
        return ""
    lo, hi, imp, thr = g.ci_low, g.ci_high, g.improvement, abs(g.threshold) if _finite(g.threshold) else 0.0
    span = max(abs(lo), abs(hi), abs(imp), thr, 1e-12) * 1.15
    w, h = 110, 14

    def x(v: float) -> float:
        return round(w / 2 + v / span * (w / 2 - 3), 2)

    color = {"regression": "#b91c1c", "within_noise": "#b45309", "improved": "#1d4ed8"}.get(g.status, "#15803d")
    thr_line = (f'<line x1="{x(-thr)}" y1="1" x2="{x(-thr)}" y2="{h - 1}" stroke="#ef4444" stroke-width="1" '
                f'stroke-dasharray="2,2"/>' if thr > 0 else "")
    return (
        f'<svg class="cibar" width="{w}" height="{h}" viewBox="0 0 {w} {h}" aria-hidden="true">'
        f'<line x1="{x(0)}" y1="0" x2="{x(0)}" y2="{h}" stroke="#94a3b8" stroke-width="1"/>{thr_line}'
        f'<line x1="{x(lo)}" y1="{h / 2}" x2="{x(hi)}" y2="{h / 2}" stroke="{color}" stroke-width="3" '
        f'stroke-linecap="round" opacity=".55"/><circle cx="{x(imp)}" cy="{h / 2}" r="3.2" fill="{color}"/></svg>'
    )


def _gates_html(result: NightlyResult) -> str:
    head = (
        '<section id="gates"><h2>Gates</h2>'
        '<p class="muted">Improvement is oriented so that positive is better (for CER/WER: baseline − candidate); '
        f"the interval is a paired bootstrap {_e(_pct(result.confidence))} CI. A gate regresses when the "
        "candidate is worse than the baseline by more than the threshold (metric units, or a share of the baseline) "
        "and the paired test says worse: the interval excludes zero, or for 0/1 metrics McNemar's exact test is "
        f"significant at {_e(_pct(1 - result.confidence))}. Tiers: a critical regression is NO-GO, a supporting one "
        "makes the night INCONCLUSIVE, advisory rows never gate. Each metric shows its scale from the metric "
        "registry (BLEU, ROUGE, CER, Distinct: fractions, 0-1).</p>"
    )
    if not result.gates:
        return head + '<p class="empty">No gates were evaluated.</p></section>'
    rows = []
    for g in _sorted_gates(result.gates):
        arrow = "↑" if g.higher_is_better else "↓"
        ci = (f'<span class="ci">[{_num(g.ci_low, True)}, {_num(g.ci_high, True)}]</span>'
              if g.ci_low is not None or g.ci_high is not None else "")
        status = _e(g.status)
        tier = _e(g.tier)
        rows.append(
            f'<tr class="gate status-{status} tier-{tier}" data-status="{status}" data-tier="{tier}">'
            f'<td><span class="tier {tier}">{tier}</span></td>'
            f"<td>{_e(g.task)}</td><td>{_e(_scaled(g.metric))} <span class=\"muted\" title=\"{'higher' if g.higher_is_better else 'lower'} is better\">{arrow}</span></td>"
            f'<td>{_e(g.baseline)}<br><span class="muted">{_e(g.baseline_label)}</span></td>'
            f'<td class="num">{_num(g.candidate_value)}</td><td class="num">{_num(g.baseline_value)}</td>'
            f'<td class="num">{_num(g.improvement, True)} {ci}{_ci_bar(g)}</td>'
            f'<td class="num">{_e(_threshold(g))}</td><td class="num">{g.n_samples or "—"}</td>'
            f'<td>{_e(_evidence(g))}</td>'
            f'<td><span class="status {status}">{_e(STATUS_LABELS.get(g.status, g.status))}</span></td></tr>'
        )
    return head + (
        "<table><thead><tr><th>Tier</th><th>Task</th><th>Metric</th><th>Baseline</th><th class=\"num\">Candidate</th>"
        f'<th class="num">Baseline value</th><th class="num">Improvement [{_e(_pct(result.confidence))} CI]</th>'
        '<th class="num">Threshold</th><th class="num">n</th><th>Test</th><th>Status</th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table></section>"
    )


def _trends_html(result: NightlyResult) -> str:
    head = ('<section id="trends"><h2>Trends</h2><p class="muted">The candidate of each night, oldest first; '
            "labels mark the model version where it changes, the ringed point is tonight, the dashed line the "
            "current champion.</p>")
    if not result.trends:
        return head + '<p class="empty">No trend data.</p></section>'
    figs = []
    for i, (key, points) in enumerate(result.trends.items()):
        if points:
            body = _plot_or_note(_trend_svg, key, points, result, f"trend{i}")
            last = points[-1]
            cap = (f"{_e(key)}: {len(points)} point{'s' if len(points) != 1 else ''}, "
                   f"latest {_num(last.value)} (v{_e(last.version)}, {_e(last.date)})")
        else:
            body, cap = '<p class="empty">no points</p>', _e(key)
        figs.append(f'<figure class="trend-plot" data-metric="{_e(key)}">{body}<figcaption>{cap}</figcaption></figure>')
    return head + '<div class="plots">' + "".join(figs) + "</div></section>"


def _tasks_html(result: NightlyResult) -> str:
    head = '<section id="tasks"><h2>Per-task metrics</h2>'
    models = [m for m in result.models if m.metrics]
    if not models:
        return head + '<p class="empty">No metrics.</p></section>'
    used: Counter[str] = Counter()
    colors = [_model_color(m, i, used) for i, m in enumerate(models)]
    tasks: dict[str, list[str]] = {}
    for m in models:
        for key in m.metrics:
            task, metric = _split_key(key)
            ms = tasks.setdefault(task, [])
            if metric not in ms:
                ms.append(metric)
    legend = '<div class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{_e(m.role)}: {_e(m.label)}</span>' for m, c in zip(models, colors)
    ) + "</div>"
    figs = []
    for i, (task, metrics) in enumerate(tasks.items()):
        body = _plot_or_note(_task_svg, task, metrics, models, colors, result, f"task{i}")
        figs.append(f'<figure class="task-bars" data-task="{_e(task)}">{body}</figure>')
    return head + legend + '<div class="bars">' + "".join(figs) + "</div></section>"


def _diff_html(reference: str, text: str) -> str:
    """`text` with the characters that differ from `reference` marked (added/substituted: red; missing: struck)."""
    reference, text = reference or "", text or ""
    if not reference or len(reference) > _DIFF_MAX_CHARS or len(text) > _DIFF_MAX_CHARS:
        return _e(text)
    out = []
    sm = difflib.SequenceMatcher(None, reference, text, autojunk=False)
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal":
            out.append(_e(text[b0:b1]))
        elif op == "insert":
            out.append(f'<span class="diff-add">{_e(text[b0:b1])}</span>')
        elif op == "delete":
            out.append(f'<del class="diff-del">{_e(reference[a0:a1])}</del>')
        else:  # replace
            out.append(f'<del class="diff-del">{_e(reference[a0:a1])}</del>'
                       f'<span class="diff-add">{_e(text[b0:b1])}</span>')
    return "".join(out)


def _worst_html(result: NightlyResult) -> str:
    head = ('<section id="worst"><h2>Worst regressed samples</h2><p class="muted">Samples where the candidate lost '
            'most against the champion. Predictions are diffed against the reference: '
            '<span class="diff-add">added or substituted</span>, <del class="diff-del">missing</del>.</p>')
    if not result.worst_samples:
        return head + '<p class="empty">No regressed samples.</p></section>'
    rows = []
    for w in result.worst_samples:
        rows.append(
            f'<tr class="worst" data-task="{_e(w.task)}" data-metric="{_e(w.metric)}">'
            f'<td>{_e(w.task)}</td><td>{_e(w.metric)}</td><td class="mono">{_e(w.id)}</td>'
            f'<td class="text">{_e(w.reference)}</td>'
            f'<td class="text candidate">{_diff_html(w.reference, w.candidate_prediction)}</td>'
            f'<td class="text baseline">{_diff_html(w.reference, w.baseline_prediction)}</td>'
            f'<td class="num">{_num(w.candidate_score)}</td><td class="num">{_num(w.baseline_score)}</td>'
            f'<td class="num">{_num(w.loss)}</td></tr>'
        )
    return head + (
        "<table><thead><tr><th>Task</th><th>Metric</th><th>Id</th><th>Reference</th><th>Candidate</th>"
        '<th>Baseline</th><th class="num">Cand. score</th><th class="num">Base score</th><th class="num">Loss</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


# ----------------------------------------------------------------------------------------------- public API

def render_html(result: NightlyResult) -> str:
    """The whole report as one self-contained HTML document (inline CSS and SVG, no scripts, no remote URLs)."""
    verdict = VERDICT_LABELS.get(result.verdict, result.verdict)
    title = f"{verdict} · nightly eval {result.date} · {result.suite}"
    sections = [_summary_html(result), _models_html(result), _gates_html(result), _trends_html(result),
                _tasks_html(result), _worst_html(result)]
    toc = "".join(f'<a href="#{s}">{t}</a>' for s, t in (("summary", "Summary"), ("models", "Models"),
                                                        ("gates", "Gates"), ("trends", "Trends"),
                                                        ("tasks", "Tasks"), ("worst", "Worst samples")))
    return (
        '<!DOCTYPE html>\n<html lang="ko">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS % {'font': FONT_STACK}}</style>\n</head>\n<body>\n<main>\n"
        f'<header class="top"><h1>Nightly evaluation — {_e(result.date)}</h1>'
        f'<span class="sub">{_e(result.suite)} · {_e(result.registered_model)}</span></header>\n'
        f'<nav class="toc">{toc}</nav>\n'
        + "\n".join(sections)
        + '\n<footer>Generated by eval.report from the nightly result'
        + (f' of run <span class="mono">{_e(result.nightly_run_id)}</span>' if result.nightly_run_id else "")
        + ".</footer>\n</main>\n</body>\n</html>\n"
    )


def _md(text: Any, limit: int = 0) -> str:
    """Text for a Markdown table cell: one line, pipes and angle brackets escaped, optionally shortened."""
    s = " ".join(("" if text is None else str(text)).split())
    if limit and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def render_markdown(result: NightlyResult, max_gates: int = 8, max_worst: int = 5) -> str:
    """A short summary for chat or email: verdict, gates (all if few, else the non-passing ones), worst
    samples, models, notes."""
    verdict = VERDICT_MD.get(result.verdict, result.verdict)
    promoted = "champion promoted" if result.promoted else "champion not promoted"
    counts = Counter(g.status for g in result.gates)
    lines = [
        f"## Nightly eval {_md(result.date)} — {_md(result.suite)} — `{_md(result.registered_model)}`",
        "",
        f"{verdict} — {promoted}",
        "",
    ]
    if result.reasons:
        lines += [f"- {_md(r)}" for r in result.reasons] + [""]
    if result.gates:
        lines.append("Gates: " + ", ".join(f"{counts[s]} {STATUS_LABELS[s]}" for s in STATUS_ORDER if counts[s]))
        lines.append("")
        gates = _sorted_gates(result.gates)
        shown = gates if len(gates) <= max_gates else [g for g in gates if g.status != "pass"]
        if shown:
            lines += [
                f"| tier | task | metric | baseline | candidate | baseline value "
                f"| improvement [{_pct(result.confidence)} CI] | threshold | test | status |",
                "|---|---|---|---|---:|---:|---:|---:|---|---|",
            ]
            for g in shown:
                ci = f" [{_num(g.ci_low, True)}, {_num(g.ci_high, True)}]" if g.ci_low is not None else ""
                status = f"**{g.status}**" if g.status == "regression" else g.status
                lines.append(
                    f"| {_md(g.tier)} | {_md(g.task)} | {_md(_scaled(g.metric))} | {_md(g.baseline)} ({_md(g.baseline_label)}) "
                    f"| {_num(g.candidate_value)} | {_num(g.baseline_value)} | {_num(g.improvement, True)}{ci} "
                    f"| {_md(_threshold(g))} | {_md(_evidence(g))} | {status} |"
                )
        if len(shown) < len(gates):
            lines.append(f"\n{len(gates) - len(shown)} passing gate(s) not shown.")
        lines.append("")
    else:
        lines += ["No gates were evaluated.", ""]
    if result.worst_samples:
        lines += [f"### Worst samples (top {min(max_worst, len(result.worst_samples))})", "",
                  "| task/metric | id | reference | candidate | baseline | loss |", "|---|---|---|---|---|---:|"]
        for w in result.worst_samples[:max_worst]:
            lines.append(
                f"| {_md(w.task)}/{_md(w.metric)} | {_md(w.id)} | {_md(w.reference, 60)} "
                f"| {_md(w.candidate_prediction, 60)} | {_md(w.baseline_prediction, 60)} | {_num(w.loss)} |"
            )
        lines.append("")
    if result.models:
        lines += ["### Models", "", "| role | model | eval run | samples/s | reused | training GPU-hours | cost |",
                  "|---|---|---|---:|---|---:|---:|"]
        for m in result.models:
            sps = _num(m.samples_per_s) if m.samples_per_s is not None else "—"
            hours = format_gpu_hours(m.gpu_hours) if m.gpu_hours is not None else "—"
            lines.append(f"| {_md(m.role)} | {_md(m.label)} | {_md(m.eval_run_id or '—')} | {sps} "
                         f"| {'yes' if m.reused else 'no'} | {hours} | {_md(m.cost or '—')} |")
        lines.append("")
    if result.notes:
        lines += ["### Notes", ""] + [f"- {_md(n)}" for n in result.notes] + [""]
    if result.policy:
        lines += ["### Gate policy", ""] + [f"- {_md(p)}" for p in result.policy] + [""]
    if result.normalizers:
        lines += ["### Text normaliser (CER/WER)", ""] + [f"- {_md(n)}" for n in normalizer_lines(result.normalizers)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_report(result: NightlyResult, out_dir: Path | str) -> dict[str, Path]:
    """Write report.html, summary.md and result.json into `out_dir` (created if needed), each atomically;
    re-running overwrites. Returns {"html": ..., "markdown": ..., "json": ...}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "markdown": out / "summary.md", "json": out / "result.json"}
    payload = json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"
    # render everything before writing anything: a rendering error leaves the previous report in place
    contents = {"html": render_html(result), "markdown": render_markdown(result), "json": payload}
    for kind in ("json", "markdown", "html"):
        write_text_atomic(paths[kind], contents[kind])
    _fsync_dir(out)
    return paths
