"""Rich tables of the estimate, one per stage, and the plan's summary."""

from __future__ import annotations

from typing import Any

from sllm_lib.memory.estimate import StageMemory, _count, _gb
from sllm_lib.memory.suggestions import Suggestion


def render_stage(m: StageMemory) -> Any:
    """A rich Table of one stage's rows, total, available memory and verdict."""
    from rich.markup import escape
    from rich.table import Table

    title = (f"{m.stage} ({m.kind}): {_count(m.params_total)} params, {_count(m.params_trainable)} trainable, "
             f"per {'GPU' if m.device == 'gpu' else 'process'}")
    table = Table(title=title, caption=m.setting, title_justify="left", caption_justify="left")
    table.add_column("component")
    table.add_column("memory", justify="right")
    table.add_column("note", overflow="fold")
    for r in m.rows:
        table.add_row(r.name, _gb(r.bytes), r.note)
    table.add_section()
    table.add_row("[bold]total[/]", f"[bold]{_gb(m.total)}[/]", "")
    if m.available_bytes is not None:
        verdict = "[green]fits[/]" if m.fits else "[red]does NOT fit[/]"
        if m.uncounted:
            verdict += f" [yellow](without the {escape(m.uncounted)}, not counted)[/]"
        table.add_row("available", _gb(m.available_bytes), f"{verdict} ({100 * m.total / m.available_bytes:.0f} %)")
    if m.cpu_rows:
        table.add_section()
        for r in m.cpu_rows:
            table.add_row(f"CPU: {r.name}", _gb(r.bytes), r.note)
        table.add_row("[bold]CPU total per process[/]", f"[bold]{_gb(m.cpu_total)}[/]", "offloaded to host memory")
    return table


def render_plan(memories: list[StageMemory], suggestions: dict[str, Suggestion | None]) -> list[Any]:
    """Renderables for `sllm plan --memory`: one table per stage, its notes and, when it does not fit, a fix."""
    out: list[Any] = []
    for m in memories:
        out.append(render_stage(m))
        out += [f"  note: {n}" for n in m.notes]
        if m.fits is False:
            s = suggestions.get(m.stage)
            out.append(f"  cheapest change that fits: {s.describe()}" if s is not None
                       else "  no combination of ZeRO, checkpointing, micro-batch, offload and 4-bit fits this GPU")
    return out
