"""Bounded tracking calls and the journal, against a fake client that can be down or hung."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from sllm_lib.tracking.journal import JOURNAL, BoundedClient, Journal


class FakeClient:
    """Records log_batch rows like MLflow does (exact duplicate metric rows are kept once)."""

    def __init__(self) -> None:
        self.down = False
        self.hang = threading.Event()  # set -> calls block until released
        self.release = threading.Event()
        self.metrics: set[tuple] = set()
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[tuple[str, str, str | None]] = []
        self.status: dict[str, str] = {}

    def _gate(self) -> None:
        if self.hang.is_set():
            self.release.wait(30)
        if self.down:
            raise ConnectionError("connection refused")

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._gate()
        for m in metrics:
            self.metrics.add((run_id, m.key, m.value, m.timestamp, m.step))
        for p in params:
            self.params[p.key] = p.value
        for t in tags:
            self.tags[t.key] = t.value

    def log_artifact(self, run_id, path, artifact_path=None):
        self._gate()
        self.artifacts.append((run_id, Path(path).read_text(encoding="utf-8"), artifact_path))

    def update_run(self, run_id, status):
        self._gate()
        self.status[run_id] = status

    def set_terminated(self, run_id, status, end_time=None):
        self._gate()
        self.status[run_id] = status


def _tracker(tmp: Path, client: FakeClient, **kw):
    from sllm_lib.tracking.tracker import MlflowTracker

    t = MlflowTracker.__new__(MlflowTracker)  # no real MlflowClient: the fake stands in
    t.client, t.tracking_uri, t.run_id, t.strict = client, "fake://", "run1", kw.get("strict", False)
    t.journal = Journal(tmp / JOURNAL)
    t.bounded = BoundedClient(t.journal, call_timeout_s=kw.get("timeout", 0.5), strict=t.strict,
                              cooldown_s=kw.get("cooldown", 30.0))
    return t


def test_outage_is_journaled_then_replayed_once(tmp_path: Path) -> None:
    client = FakeClient()
    t = _tracker(tmp_path, client)
    t.log_metrics({"loss": 3.0}, step=1)
    client.down = True
    for step in range(2, 6):
        t.log_metrics({"loss": 1.0 / step}, step=step)
    t.log_params({"lr": 1e-3})
    t.set_status("FINISHED")
    assert {m[4] for m in client.metrics} == {1}
    assert len(t.journal.entries()) == 6
    # still down at stage end: nothing lost, the journal stays
    assert t.flush().pending == 6
    client.down = False
    stats = t.flush()
    assert stats.replayed == 6 and stats.pending == 0
    assert sorted(m[4] for m in client.metrics) == [1, 2, 3, 4, 5]  # each step once
    assert client.params == {"lr": "0.001"} and client.status["run1"] == "FINISHED"
    # a second replay (sllm tracking sync) finds nothing to do and duplicates nothing
    assert Journal(tmp_path / JOURNAL).replay(client).replayed == 0
    assert len(client.metrics) == 5


def test_a_hung_server_costs_one_timeout_not_one_per_call(tmp_path: Path) -> None:
    client = FakeClient()
    t = _tracker(tmp_path, client, timeout=0.3)
    client.hang.set()
    waits = []
    for step in range(20):
        t0 = time.monotonic()
        t.log_metrics({"loss": float(step)}, step=step)
        waits.append(time.monotonic() - t0)
    assert max(waits) < 0.3 + 0.2  # bounded by call_timeout_s
    assert sum(w > 0.2 for w in waits) == 1  # only the first call waited; the rest went straight to the journal
    assert len(t.journal.entries()) == 20
    client.hang.clear()
    client.release.set()  # the stuck call completes late; replay re-sends it: the row is kept once
    time.sleep(0.1)
    assert t.flush().replayed == 20
    assert sorted(m[4] for m in client.metrics) == list(range(20))


def test_strict_fails_fast(tmp_path: Path) -> None:
    client = FakeClient()
    client.down = True
    t = _tracker(tmp_path, client, strict=True)
    with pytest.raises(ConnectionError):
        t.log_metrics({"loss": 1.0}, step=1)
    assert not (tmp_path / JOURNAL).exists()


def test_artifacts_are_spooled_and_torn_lines_skipped(tmp_path: Path) -> None:
    client = FakeClient()
    client.down = True
    t = _tracker(tmp_path, client)
    src = tmp_path / "report.md"
    src.write_text("first", encoding="utf-8")
    t.log_artifact(src, "eval")
    src.write_text("changed later", encoding="utf-8")  # the journal keeps what was logged at the time
    with open(tmp_path / JOURNAL, "a", encoding="utf-8") as f:
        f.write('{"id": "torn", "op": "log_b')  # a crash mid-line
    client.down = False
    assert Journal(tmp_path / JOURNAL).replay(client).replayed == 1
    assert client.artifacts == [("run1", "first", "eval")]
    assert not (tmp_path / "tracking_spool").exists()


def test_journal_lines_are_json_with_timestamps(tmp_path: Path) -> None:
    client = FakeClient()
    client.down = True
    t = _tracker(tmp_path, client)
    t.log_metrics({"loss": 2.5}, step=7)
    (line,) = (tmp_path / JOURNAL).read_text(encoding="utf-8").splitlines()
    entry = json.loads(line)
    (key, value, ts, step), = entry["payload"]["metrics"]
    assert (entry["op"], key, value, step) == ("log_batch", "loss", 2.5, 7) and ts > 1.7e12
