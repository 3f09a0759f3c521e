"""Headless Chromium for the browser tests (Debian `chromium`; scripts/browser_deps.sh installs it).

A missing Chromium skips a test, unless SLLM_REQUIRE_SERVICES=1 (CI), where it is a failure.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TIMEOUT_S = 90
REPO = Path(__file__).resolve().parents[1]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("SLLM_REQUIRE_SERVICES") == "1":
            pytest.fail("chromium is not installed and SLLM_REQUIRE_SERVICES=1: run `bash scripts/browser_deps.sh` "
                        "(as root) to install chromium and fonts-nanum")
        pytest.skip("chromium not installed (bash scripts/browser_deps.sh)")
    return exe


def run_chromium(exe: str, tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run with a fresh profile (runs never share state); fails the test with its stderr."""
    profile = tmp_path / f"profile-{name}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions", "--disable-sync", "--hide-scrollbars",
           "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**os.environ, "HOME": str(tmp_path), "LANG": "C.UTF-8"})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"headless chromium ({name}) did not finish in {TIMEOUT_S}s: {' '.join(cmd)}\n"
                    f"stderr: {(exc.stderr or b'')[-2000:]!r}")
    if proc.returncode != 0:
        pytest.fail(f"headless chromium ({name}) exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def visible_text(dom: str) -> str:
    """The text a person reads on a rendered page: scripts and styles dropped, tags removed, spaces folded."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def artifacts_dir(name: str) -> Path:
    """Where a browser test keeps its screenshots for people to look at: $SLLM_TEST_ARTIFACTS/<name>, default
    test-artifacts/<name> in the checkout (ignored by git; CI keeps the folder)."""
    root = Path(os.environ.get("SLLM_TEST_ARTIFACTS") or REPO / "test-artifacts")
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    return out
