"""A stand-in stage for tests/integration/test_warm_start.py: `main([PATH])` reads what to do from PATH (JSON) and
writes the process's state beside it, as the warm starter's forked child sees it."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # the listing's own descriptor, closed since
        return ""


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    todo = json.loads(path.read_text(encoding="utf-8"))
    import numpy

    state = {
        "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv, "env": dict(os.environ),
        "stdin": os.readlink("/proc/self/fd/0"), "numpy": float(numpy.random.random()),
        "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "torch_loaded": "torch" in sys.modules,
        "fds": {fd: _target(fd) for fd in os.listdir("/proc/self/fd")},
    }
    out = path.with_suffix(".state.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, out)
    time.sleep(float(todo.get("sleep_s", 0)))
    if todo.get("done"):
        Path(todo["done"]).write_text("ok", encoding="utf-8")
    return int(todo.get("code", 0))
