"""Peak RSS of a measuring child is its own, not its parent's (the compression report's per-model memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sllm_lib.models.variants import peak_rss_mb
from tests.conftest import REPO

_CHILD = r"""
import json, os, sys
from sllm_lib.models.variants import peak_rss_mb
block = b"\x01" * (int(sys.argv[1]) * 2**20)  # written, so resident
print(json.dumps({"pid": os.getpid(), "peak_rss_mb": peak_rss_mb()}))
"""


def _child(mb: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(mb)], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_each_child_reports_its_own_peak_not_its_parents() -> None:
    parent_block = b"\x01" * (300 * 2**20)  # a parent far larger than either child, as the stage process is
    small, large = _child(20), _child(120)
    assert len({small["pid"], large["pid"], os.getpid()}) == 3  # two measuring processes, neither the parent
    assert peak_rss_mb() >= 300
    assert 20 <= small["peak_rss_mb"] < 250  # ru_maxrss would report the parent's >= 300 MB here
    assert 120 <= large["peak_rss_mb"] < 350
    assert 80 <= large["peak_rss_mb"] - small["peak_rss_mb"] <= 130  # the 100 MB that only the large one wrote
    del parent_block
