"""The `sllm` command: validate | plan | submit | eval | nightly | status | logs | cancel | lineage | export |
schema, and the groups data (validate, stats, convert-aihub), cache (build, stats, verify, gc) and tracking (sync).

One module per group of commands (jobs, models, cache, data, tracking) over `common`. Start-up imports nothing
heavy (no torch, transformers or mlflow): those load inside the commands that need them, so `sllm --help` and
`sllm validate` stay fast.
"""

from __future__ import annotations

import os
import sys

import typer

from launch.cli import cache, data, jobs, models, tracking  # noqa: F401  (each registers its commands on `app`)
from launch.cli.common import _STATE, _configure_logging, app, err_console
from sllm_lib.errors import SllmError

__all__ = ["app", "main"]


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    log_level: str = typer.Option(os.environ.get("SLLM_LOG_LEVEL", "INFO"), "--log-level", help="Logging level."),
) -> None:
    _STATE["debug"] = debug
    _configure_logging(log_level)


# the tqdm bars libraries draw, each switched off by its own variable: MLflow's artifact transfers ("Downloading
# artifacts"), the hub's file downloads and transformers' loading bars (transformers follows the hub's setting)
PROGRESS_BAR_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def quiet_progress_bars_off_terminal() -> None:
    """No progress bars when the output is not a terminal (a log file, a pipe, a CI job): a bar there is a wall of
    carriage returns. Set in the environment, so stage processes started from here inherit it; a value the user
    set wins. On a terminal nothing changes (rich progress, tqdm bars)."""
    if sys.stdout.isatty() and sys.stderr.isatty():
        return
    for name, value in PROGRESS_BAR_ENV.items():
        os.environ.setdefault(name, value)


def main() -> None:
    """Console-script entry: SllmError -> exit 2 with the message, no traceback unless --debug."""
    quiet_progress_bars_off_terminal()
    try:
        rc = app(standalone_mode=False)  # typer.Exit(n) comes back as the return value here, not raised
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except SllmError as exc:
        if _STATE["debug"]:
            raise
        from rich.markup import escape

        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except KeyboardInterrupt:
        err_console.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except Exception as exc:
        # usage errors: typer 0.29 raises its bundled click's exceptions, which are not click.ClickException
        # subclasses, so match on the interface (show() + exit_code) instead of the class
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(2)
        raise
