"""`sllm tracking sync`: what a tracking outage kept on disk, sent to the tracking server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from launch.cli.common import console, tracking_app
from sllm_lib.errors import SllmError


@tracking_app.command("sync")
def tracking_sync(run_dir: Path = typer.Argument(..., help="A run dir (runs/<job>/<hash>) or a folder holding runs."),
                  tracking_uri: Optional[str] = typer.Option(None, help="Default: the one the run used."),
                  timeout_s: float = typer.Option(120.0, help="Give up on a journal after this long.")) -> None:
    """Replay journaled tracking operations (an outage during training) to the server; exit 2 if some remain."""
    from mlflow import MlflowClient

    from sllm_lib.secrets import redact_text
    from sllm_lib.tracking.journal import JOURNAL, Journal
    from sllm_lib.tracking.tracker import replay_bounded

    journals = sorted(run_dir.rglob(JOURNAL))
    if not journals:
        console.print(f"{run_dir}: no tracking journal (nothing to sync)")
        return
    table = Table(title=f"tracking sync {run_dir}")
    for col in ("journal", "replayed", "still pending", "error"):
        table.add_column(col, overflow="fold")
    left = 0
    for path in journals:
        uri = tracking_uri or _run_tracking_uri(path)
        j = Journal(path)
        if not j.entries():
            table.add_row(str(path.relative_to(run_dir)), "0", "0", "")
            continue
        stats = replay_bounded(j, MlflowClient(tracking_uri=uri), timeout_s=timeout_s)
        left += stats.pending
        table.add_row(str(path.relative_to(run_dir)), str(stats.replayed), str(stats.pending),
                      redact_text(stats.error or ""))
    console.print(table)
    if left:
        raise SllmError(f"{left} journaled operations could not be replayed yet; run this again when the "
                        f"tracking server answers")


def _run_tracking_uri(journal: Path) -> str:
    """The tracking URI recorded in the state.json of the run the journal belongs to."""
    for d in [journal.parent, *journal.parents]:
        state = d / "state.json"
        if state.is_file():
            uri = json.loads(state.read_text(encoding="utf-8")).get("tracking_uri")
            if uri:
                return uri
    raise SllmError(f"{journal}: no state.json with a tracking_uri above it; pass --tracking-uri")
