"""A private Ray head on 127.0.0.1: started for `address: local` profiles (and by the tests), stopped by its pid.

`ray start --head --block` runs in its own session; stopping it is a SIGTERM to that one pid (never
`ray stop`, which kills every Ray process on the machine by name). Every port is chosen free up front,
so heads of parallel runs do not collide, and everything listens on loopback only.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sllm_lib.errors import SubmissionError
from sllm_lib.ports import free_port

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


def is_loopback(address: str | None) -> bool:
    """A private head on this machine (None / 'local' / 127.0.0.1 / localhost), as opposed to a real cluster."""
    if address in (None, "", "local"):
        return True
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def ray_env(base: dict[str, str] | None = None, *, loopback: bool = True) -> dict[str, str]:
    """The environment our Ray processes run with (head, drivers, clients) so they agree.

    The settings apply to loopback heads only: for a real cluster the user's own environment decides
    (its auth mode; a driver there must advertise its real IP, not 127.0.0.1).
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if loopback:
        # a plain local ray.init() leaves ~/.ray/auth_token behind; a head started later then demands tokens
        # that our clients do not send and they hang: one explicit mode for head and clients alike
        env.setdefault("RAY_AUTH_MODE", "disabled")
        # without it Ray swaps 127.0.0.1 for the machine's other interface and listens on all of them
        env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # stopping a head otherwise waits ~30 s for graceful draining of a node that has nothing left to drain
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    return env


def _ray_cli() -> str:
    """The `ray` script of this interpreter's environment (the head must run the same Ray and Python)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise SubmissionError("the Ray executor needs Ray: pip install 'ray[train,default]==2.60.0'")
    return found


@dataclass
class RayHead:
    """A running head: its GCS address, dashboard URL (or None) and the pid that owns it."""

    pid: int
    gcs_address: str
    dashboard_url: str | None
    temp_dir: Path
    client_address: str  # ray://127.0.0.1:PORT (Ray Client)
    log_file: Path
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def wait_client(self, timeout_s: float = 30.0) -> str:
        """Wait (bounded) until the Ray Client server of the head accepts connections; its ray:// address."""
        port = int(self.client_address.rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    return self.client_address
            except OSError:
                if time.monotonic() > deadline or not self.alive():
                    raise SubmissionError(f"Ray Client server of the head {self.pid} not listening on port {port} "
                                          f"after {timeout_s:.0f} s; see {self.log_file}") from None
                time.sleep(0.25)

    def session_logs(self, pattern: str = "*", chars: int = 2000) -> str:
        """The tails of the head's session log files matching `pattern` (e.g. "ray_client_server*"), for error
        messages about a failure inside the cluster; "" when there are none."""
        logs = self.temp_dir / "session_latest" / "logs"
        parts = []
        for path in sorted(logs.glob(pattern)):
            if path.is_file():
                parts.append(f"--- {path.name}\n{_tail(path, 40)[-chars:]}")
        return "\n".join(parts)

    def rss_bytes(self) -> int:
        """Resident memory of the head and every process under it (gcs, raylet, dashboard, workers)."""
        pids = [self.pid]
        seen: set[int] = set()
        total = 0
        while pids:
            pid = pids.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            pids.extend(int(c) for c in children)
        return total

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the head's process group (its session), SIGKILL after `timeout_s`; then remove its files."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.alive():
                log.warning("ray head %d did not stop in %.0f s; killing it", self.pid, timeout_s)
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self._proc is not None:
                self._proc.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def start_local_head(num_cpus: int | None = None, *, num_gpus: int | None = None, dashboard: bool = False,
                     log_dir: Path | None = None, timeout_s: float = START_TIMEOUT_S) -> RayHead:
    """Start `ray start --head --block` on 127.0.0.1 and wait (bounded) until a driver can connect."""
    # Ray's socket paths must stay short (unix sockets: 107 bytes): a fresh folder right under /tmp
    temp_dir = Path(tempfile.mkdtemp(prefix="sllm-ray-", dir="/tmp"))
    log_file = (log_dir or temp_dir) / "ray_head.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    port, client_port = free_port(), free_port()
    cmd = [_ray_cli(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--ray-client-server-port", str(client_port), "--num-cpus", str(num_cpus or os.cpu_count() or 1),
           "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    dash_url = None
    if dashboard:
        dash_port = free_port()
        cmd += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                "--dashboard-agent-listen-port", str(free_port())]
        dash_url = f"http://127.0.0.1:{dash_port}"
    else:
        cmd += ["--include-dashboard", "false"]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=ray_env(), start_new_session=True)
    head = RayHead(pid=proc.pid, gcs_address=f"127.0.0.1:{port}", dashboard_url=dash_url, temp_dir=temp_dir,
                   client_address=f"ray://127.0.0.1:{client_port}", log_file=log_file, _proc=proc)
    deadline = time.monotonic() + timeout_s
    ready = False
    while time.monotonic() < deadline:
        if not head.alive():
            break
        ready = "will now block forever" in log_file.read_text(errors="replace")
        if ready and dash_url is not None:
            ready = _http_ok(f"{dash_url}/api/version")
        if ready:
            break
        time.sleep(0.25)
    if not ready:
        alive = head.alive()
        head.stop(timeout_s=5)
        why = f"not ready after {timeout_s:.0f} s" if alive else "exited"
        raise SubmissionError(f"local Ray head {why}; last lines of {log_file}:\n{_tail(log_file)}")
    log.info("ray head pid %d at %s%s", head.pid, head.gcs_address, f", dashboard {dash_url}" if dash_url else "")
    return head


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - loopback URL we built
            return r.status == 200
    except OSError:
        return False
