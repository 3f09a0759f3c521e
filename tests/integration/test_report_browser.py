"""The nightly HTML report opened in a real headless Chromium: screenshot and rendered DOM.

Needs Debian `chromium` and a Korean font (scripts/browser_deps.sh installs both). Skips when Chromium is
missing, unless SLLM_REQUIRE_SERVICES=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

from eval.report import write_report
from tests.browser import chromium, run_chromium
from tests.unit.eval.test_report import KOREAN_REF, make_result

WIDTH, HEIGHT = 1280, 2400


def _png_info(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, ctype


def _png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode a non-interlaced 8-bit RGB/RGBA PNG (what Chromium writes) into unfiltered rows: pure stdlib."""
    w, h, depth, ctype = _png_info(data)
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, bpp, rows


def _colour_stats(data: bytes, step: int = 7) -> tuple[int, float, int]:
    """(distinct sampled colours, share of non-background pixels, red-banner pixels) over a pixel sample."""
    try:  # Pillow comes with matplotlib; the stdlib decoder is the fallback
        from PIL import Image
        import io

        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        px = [img.getpixel((x, y)) for y in range(0, h, step) for x in range(0, w, step)]
    except ImportError:
        w, bpp, rows = _png_rows(data)
        px = [tuple(r[x * bpp:x * bpp + 3]) for r in rows[::step] for x in range(0, w, step)]
    bg = max(set(px), key=px.count)
    ink = sum(p != bg for p in px) / len(px)
    red = sum(1 for r, g, b in px if r > 150 and g < 60 and b < 60)  # the NO-GO banner (#b91c1c)
    return len(set(px)), ink, red


def test_report_renders_in_headless_chromium(tmp_path: Path):
    exe = chromium()
    result = make_result()
    paths = write_report(result, tmp_path / "report")
    url = paths["html"].resolve().as_uri()
    shot = tmp_path / "screenshot.png"

    t0 = time.monotonic()
    run_chromium(exe, tmp_path, "screenshot", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", url)
    dom = run_chromium(exe, tmp_path, "dom", f"--window-size={WIDTH},{HEIGHT}", "--dump-dom", url).stdout
    elapsed = time.monotonic() - t0

    # the screenshot: the requested size, and an actual page (colours, text, the red banner), not a blank one
    assert shot.exists(), f"chromium wrote no screenshot at {shot}"
    data = shot.read_bytes()
    w, h, _, _ = _png_info(data)
    assert (w, h) == (WIDTH, HEIGHT), f"screenshot is {w}x{h}, asked for {WIDTH}x{HEIGHT}"
    assert len(data) > 60_000, f"screenshot is only {len(data)} bytes: blank page?"
    colours, ink, red = _colour_stats(data)
    assert colours > 50 and ink > 0.05, f"screenshot looks blank: {colours} colours, {ink:.1%} non-background"
    assert red > 100, "no red NO-GO banner in the screenshot"
    if os.environ.get("SLLM_REPORT_SCREENSHOT"):  # keep a copy to look at
        shutil.copyfile(shot, os.environ["SLLM_REPORT_SCREENSHOT"])

    # the DOM after rendering: every section, and what each must show
    assert dom.strip(), "chromium --dump-dom printed nothing"
    summary = re.search(r'<section id="summary">(.*?)</section>', dom, re.S)
    assert summary and 'class="verdict no-go"' in summary.group(1) and "NO-GO" in summary.group(1)
    gates = re.search(r'<section id="gates">(.*?)</section>', dom, re.S)
    assert gates and len(re.findall(r'<tr class="gate status-', gates.group(1))) == len(result.gates)
    assert 'class="gate status-regression tier-critical"' in gates.group(1)
    trends = re.search(r'<section id="trends">(.*?)</section>', dom, re.S)
    assert trends
    plots = re.findall(r'<figure class="trend-plot" data-metric="([^"]+)">(.*?)</figure>', trends.group(1), re.S)
    assert [k for k, _ in plots] == list(result.trends)
    assert all("<svg" in body and "<path" in body for _, body in plots), "a trend plot has no SVG drawing"
    tasks = re.search(r'<section id="tasks">(.*?)</section>', dom, re.S)
    assert tasks and tasks.group(1).count('class="task-bars"') == 3 and tasks.group(1).count("<svg") == 3
    worst = re.search(r'<section id="worst">(.*?)</section>', dom, re.S)
    assert worst and worst.group(1).count('<tr class="worst"') == len(result.worst_samples)
    assert KOREAN_REF in worst.group(1)
    assert "&lt;script&gt;alert" in worst.group(1), "the <script> text in a prediction must stay text"
    assert "<script" not in dom.lower(), "a live <script> element reached the DOM"
    assert elapsed < 60, f"chromium took {elapsed:.0f}s"
