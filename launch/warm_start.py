"""Warm stage starts for the local executor: one process imports torch, transformers and the stage code once, then
forks a process per stage, which starts running its stage at once instead of after those imports (~10 s on a
2-core CPU, a few seconds on a workstation, for every stage and every evaluation of a pipeline).

`python -m launch.warm_start OUT_FD IDLE_S` reads requests on stdin and answers on file descriptor OUT_FD, one JSON line
each:

    -> {"request": PATH, "env": {...}, "cwd": DIR}   fork a stage: `python -m launch.worker PATH`, exactly that env
                                                      ("entry": MODULE runs MODULE.main([PATH]) instead)
    <- {"ready": true}                                once the imports are done ({"ready": false, "why": ...}: unusable)
    <- {"pid": N} or {"error": "..."}                 per request, in order
    <- {"exit": N, "code": C}                         when stage N ends (C as subprocess.Popen's returncode)
    <- {"bye": "idle"}                                when it leaves after IDLE_S with no request and no stage running

It also ends when its stdin closes (the executor closed, or the launcher died); stages still running go on.
The executor gives it only requests whose environment is the one it was started with: modules read some variables
(HF_HOME, OMP_NUM_THREADS, ...) when they are imported, here, before the fork. CPU profiles only (LocalProfile.warm):
CUDA cannot be used in a process forked after an import initialised it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# what every stage imports before its first line of work; a module missing here is imported by the stage itself
PRELOAD = ("torch", "transformers", "transformers.trainer", "peft", "launch.worker", "launch.stages",
           "sllm_lib.training.runner", "sllm_lib.data.encode", "sllm_lib.models.refs")


def _send(fd: int, msg: dict[str, Any]) -> None:
    """The starter's answer (one write of < PIPE_BUF bytes: never interleaved); it leaves once nobody reads them."""
    try:
        os.write(fd, (json.dumps(msg) + "\n").encode())
    except BrokenPipeError:
        raise SystemExit(0) from None  # the executor is gone: stages already forked go on


def _preload() -> str | None:
    """Import PRELOAD; the reason the process cannot fork safely, or None."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # fork copies only the calling thread: a thread started by an import (and any lock it holds) would be lost
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        return f"threads running after the imports: {', '.join(others)}"
    import torch

    if torch.cuda.is_initialized():  # a forked child could not use CUDA
        return "an import initialised CUDA"
    import gc

    gc.freeze()  # the imported objects stay out of the children's collections: their pages stay shared
    return None


def _child(msg: dict[str, Any], out_fd: int) -> None:
    """The forked stage process: the state a fresh `python -m launch.worker PATH` would have, then the stage."""
    code = 1
    try:
        os.close(out_fd)  # only the starter answers the executor; its end must close when the starter does
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # stdin was the starter's request pipe
        os.close(null)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the starter ignores Ctrl-C; a stage stops on it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with contextlib.suppress(OSError):  # `top` and `ps -o comm` name it a stage, not its starter
            Path("/proc/self/comm").write_text("sllm-stage")
        os.environ.clear()
        os.environ.update(msg["env"])
        os.chdir(msg["cwd"])
        import importlib

        entry = importlib.import_module(msg.get("entry", "launch.worker"))
        sys.argv = [entry.__file__ or entry.__name__, msg["request"]]
        if "numpy" in sys.modules:  # a new process seeds numpy's global generator from the OS; `random` reseeds itself
            sys.modules["numpy"].random.seed()
        code = entry.main([msg["request"]])
    except SystemExit as exc:  # sys.exit() in the stage, as the interpreter would read it
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the stage process must end here, never return into the starter's loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            logging.shutdown()
            atexit._run_exitfuncs()  # what the interpreter's exit would run; os._exit below skips it
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(children: set[int], out_fd: int) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _send(out_fd, {"exit": pid, "code": code})


def serve(out_fd: int, idle_s: float) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal reaches the stages, not their starter
    try:
        why = _preload()
    except Exception as exc:  # noqa: BLE001 - reported to the executor, which starts stages the usual way
        why = f"{type(exc).__name__}: {exc}"
    if why is not None:
        _send(out_fd, {"ready": False, "why": why})
        return 1
    _send(out_fd, {"ready": True})
    children: set[int] = set()
    buf = b""
    last = time.monotonic()
    while True:
        readable, _, _ = select.select([0], [], [], 0.1)
        _reap(children, out_fd)
        if readable:
            data = os.read(0, 65536)
            if not data:
                return 0  # the executor is gone or closed: running stages go on without their starter
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                    pid = os.fork()
                except (ValueError, OSError) as exc:
                    _send(out_fd, {"error": f"{type(exc).__name__}: {exc}"})
                    continue
                if pid == 0:
                    _child(msg, out_fd)  # never returns
                children.add(pid)
                _send(out_fd, {"pid": pid})
            last = time.monotonic()
        elif children:
            last = time.monotonic()
        elif time.monotonic() - last > idle_s and not buf:
            _send(out_fd, {"bye": "idle"})
            return 0


# --- the executor's side ----------------------------------------------------------------------------------------


class StarterUnavailable(RuntimeError):
    """The warm starter cannot start this stage (it failed to import, left, or did not answer): start it cold."""


class ForkedProcess:
    """A stage forked by the starter, with the part of subprocess.Popen's interface the local executor uses.

    Its exit status comes from the starter (its parent). Should the starter die first, the status is unknown: the
    stage counts as exited 0 when it wrote its result file (written atomically, last, on success), else 1."""

    def __init__(self, pid: int, starter: WarmStarter, args: list[str], done_file: Path) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._starter = starter
        self._done_file = done_file

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._starter.exit_code(self.pid, self._done_file)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmStarter:
    """One `python -m launch.warm_start` process and the thread that reads its answers."""

    def __init__(self, env: dict[str, str], cwd: str, *, idle_s: float = 120.0, ready_timeout_s: float = 300.0,
                 answer_timeout_s: float = 30.0) -> None:
        self.env = dict(env)
        self.ready_timeout_s = ready_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # one request at a time: answers come back in order
        self._ready: bool | None = None
        self._why = ""
        self._answers: list[dict[str, Any]] = []
        self._codes: dict[int, int] = {}
        self._gone = False
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "launch.warm_start", str(write_fd), str(idle_s)],
                                         stdin=subprocess.PIPE, env=self.env, cwd=cwd, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._reader = threading.Thread(target=self._read, args=(os.fdopen(read_fd, "rb"),), daemon=True,
                                        name=f"warm-start-{self.proc.pid}")
        self._reader.start()

    def _read(self, answers: Any) -> None:
        with answers:
            for line in answers:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self._cond:
                    if "ready" in msg:
                        self._ready, self._why = bool(msg["ready"]), str(msg.get("why", ""))
                    elif "exit" in msg:
                        self._codes[int(msg["exit"])] = int(msg["code"])
                    elif "bye" in msg:
                        self._why = f"it left after {msg['bye']}"
                    else:
                        self._answers.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._gone = True
            self._cond.notify_all()
        self.proc.wait()

    @property
    def alive(self) -> bool:
        with self._cond:
            return not self._gone and self._ready is not False

    @property
    def failed(self) -> bool:
        """It could not become ready (an import failed, or threads ran after the imports)."""
        with self._cond:
            return self._ready is False

    def spawn(self, request_file: Path, env: dict[str, str], cwd: str, done_file: Path, *,
              entry: str = "launch.worker") -> ForkedProcess:
        """Fork a stage running `python -m launch.worker request_file` (after the imports, on the first call);
        `entry` names another module whose main(argv) runs instead."""
        with self._lock:
            with self._cond:
                if not self._cond.wait_for(lambda: self._ready is not None or self._gone, self.ready_timeout_s):
                    raise StarterUnavailable(f"its imports took over {self.ready_timeout_s:.0f} s")
                if not self._ready or self._gone:
                    raise StarterUnavailable(self._why or f"it exited with code {self.proc.poll()}")
            line = json.dumps({"request": str(request_file), "env": env, "cwd": cwd, "entry": entry}) + "\n"
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise StarterUnavailable(f"its request pipe is closed ({exc})") from None
            with self._cond:
                if not self._cond.wait_for(lambda: self._answers or self._gone, self.answer_timeout_s):
                    raise StarterUnavailable(f"no answer in {self.answer_timeout_s:.0f} s")
                if not self._answers:
                    raise StarterUnavailable(self._why or "it exited")
                answer = self._answers.pop(0)
        if "pid" not in answer:
            raise StarterUnavailable(str(answer.get("error", answer)))
        return ForkedProcess(int(answer["pid"]), self, [sys.executable, "-m", entry, str(request_file)], done_file)

    def exit_code(self, pid: int, done_file: Path) -> int | None:
        """Stage `pid`'s exit status once it has ended, else None."""
        with self._cond:
            if pid in self._codes:
                return self._codes[pid]
            gone = self._gone
        if not gone or _running(pid):
            return None
        with self._cond:  # the starter may have reported it just before it went
            if pid in self._codes:
                return self._codes[pid]
        code = 0 if done_file.is_file() else 1
        log.warning("the warm starter of stage pid %d went before the stage ended; its exit status is unknown "
                    "(taken as %d: its result file is %s)", pid, code, "there" if code == 0 else "missing")
        return code

    def close(self) -> None:
        """Stop taking requests: the starter leaves; stages it started go on, their exit status then read as
        `exit_code` says once it is gone."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie waiting for its new parent to reap it); Linux, as fork here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no such process
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), float(sys.argv[2])))
