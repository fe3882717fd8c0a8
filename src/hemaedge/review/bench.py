"""Review page benchmark: page load with ~500 cells in headless Chromium, and reviewer effort.

    python -m hemaedge.review.bench --cells 500 --out benchmarks/results/review_page_load.md
    python -m hemaedge.review.bench --cells 17 --repeats 1 --corrections 3 --out /tmp/shot.md \
        --screenshot docs/review.png          # the screenshot in docs/review.md

1. A real run: `hemaedge edge run --source samples --loop --save-crops all` with the packaged
   default bundle until it has at least --cells cells.
2. The page served by uvicorn on localhost; Chromium (Debian's /usr/bin/chromium) opens it in a
   fresh context each time (cold cache): time to the load event (every crop in view decoded) and
   to the page being ready for keys; median and max of --repeats loads. The gallery comes in
   pages (app.PAGE_SIZE cells), so the first page is what loads.
3. Reviewer effort: --corrections cells corrected by key presses only; key presses per corrected
   cell, and the median round trip of one correction (key -> corrections.csv -> counts shown).
Absolute timings depend on the machine and its load (recorded with the table); the goal is <= 1 s.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def make_run(out: Path, cells: int) -> Path:
    """A real run of the default bundle on samples/ (looped) with at least `cells` cells."""
    per_frame = 17 / 8  # samples/ gives 17 cells in 8 frames
    frames = int(cells / per_frame) + 8
    exe = Path(sys.executable).with_name("hemaedge")
    again = []  # a second try replaces the first (the run folder it made itself)
    while True:
        subprocess.run([str(exe), "edge", "run", "--source", str(REPO / "samples"), "--loop", "--max-frames",
                        str(frames), "--save-crops", "all", "--out", str(out), "-q", *again], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        again = ["--force"]
        with open(out / "cells.csv", newline="") as fh:
            n = sum(1 for _ in csv.DictReader(fh))
        if n >= cells:
            return out
        frames = int(frames * cells / max(n, 1)) + 8


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(run: Path, repeats: int, corrections: int, screenshot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    from hemaedge.review.browser import LiveServer, launch_chromium
    from hemaedge.review.app import create_app
    from hemaedge.review.rundata import RunReview, read_corrections

    n_cells = len(RunReview.open(run).cells)
    res = {"cells": n_cells, "load_ms": [], "ready_ms": [], "html_kb": None, "render_ms": []}
    with LiveServer(create_app(run)) as srv, sync_playwright() as p:
        import httpx

        for _ in range(repeats):
            t0 = time.perf_counter()
            httpx.get(srv.url + "/", timeout=30).raise_for_status()
            res["render_ms"].append((time.perf_counter() - t0) * 1e3)
        browser = launch_chromium(p)
        try:
            for _ in range(repeats):
                ctx = browser.new_context(viewport={"width": 1280, "height": 800})
                page = ctx.new_page()
                page.goto(srv.url + "/", wait_until="load")
                page.wait_for_selector("body[data-ready='1']")
                t = page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
                    return {load: n.loadEventEnd, ready: n.domContentLoadedEventEnd, html: n.responseEnd,
                            size: n.transferSize}; }""")
                imgs_ok = page.evaluate("() => Array.from(document.images).filter(i => i.complete).length")
                res["figures"] = page.evaluate("() => document.querySelectorAll('figure.cell').length")
                res["load_ms"].append(t["load"])
                res["ready_ms"].append(t["ready"])
                res.setdefault("html_ms", []).append(t["html"])
                res["html_kb"] = round(t["size"] / 1024, 1)
                res["images_complete_at_load"] = imgs_ok
                ctx.close()
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(srv.url + "/")
            page.wait_for_selector("body[data-ready='1']")
            keys = [k for k in "12345678"]
            presses, rtt = 0, []
            for i in range(corrections):
                before = len(read_corrections(run))
                shown = page.inner_text("#status")
                t0 = time.perf_counter()
                page.keyboard.press(keys[i % len(keys)])
                presses += 1
                page.wait_for_function("s => document.querySelector('#status').textContent !== s", arg=shown)
                rtt.append((time.perf_counter() - t0) * 1e3)
                assert len(read_corrections(run)) == before + 1
            res["corrections"] = len(read_corrections(run))
            res["key_presses"] = presses
            res["correction_ms"] = rtt
            if screenshot:
                page.keyboard.press("c")
                page.wait_for_timeout(300)
                page.screenshot(path=str(screenshot))
                _shrink_png(screenshot)
        finally:
            browser.close()
    return res


def _shrink_png(path: Path) -> None:
    """128-colour palette PNG (a quarter the size) for the docs, where Pillow is installed."""
    try:
        from PIL import Image
    except ImportError:
        return
    im = Image.open(path).convert("RGB")
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def table(res: dict, command: str) -> str:
    med = statistics.median
    load1 = os.getloadavg()
    return "\n".join([
        "# Review page: load time and reviewer effort",
        "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} ({_cpu()}), Debian Chromium headless via Playwright; "
        f"date {dt.date.today().isoformat()}; load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} "
        "(shared machine: absolute times are noisy).",
        "",
        f"Command: `{command}`",
        "",
        "| measure | value |",
        "|---|---|",
        f"| cells in the run (real run: default bundle on samples/, looped) | {res['cells']} |",
        f"| cells on the first page of the gallery (the page size; the pages after it load the same way) | "
        f"{res.get('figures')} |",
        f"| server: GET / rendered and received (httpx), median / max of {len(res['render_ms'])} | "
        f"{med(res['render_ms']):.0f} / {max(res['render_ms']):.0f} ms |",
        f"| page load, cold cache, to the load event, median / max of {len(res['load_ms'])} "
        f"(crops in view decoded by then: {res['images_complete_at_load']} of {res.get('figures')}; the rest load "
        f"lazily as you scroll) | {med(res['load_ms']):.0f} / {max(res['load_ms']):.0f} ms |",
        f"| of which: HTML received (responseEnd), median / max | {med(res['html_ms']):.0f} / {max(res['html_ms']):.0f} ms |",
        f"| page ready for keys (DOMContentLoaded), median / max | {med(res['ready_ms']):.0f} / {max(res['ready_ms']):.0f} ms |",
        f"| HTML transferred | {res['html_kb']} KB |",
        f"| goal: page load <= 1 s | median {'met' if med(res['load_ms']) <= 1000 else 'NOT met'}, "
        f"every load {'met' if max(res['load_ms']) <= 1000 else 'NOT met'} |",
        f"| key presses per corrected cell ({res['corrections']} cells corrected by keys only) | "
        f"{res['key_presses'] / max(1, res['corrections']):.2f} |",
        f"| one correction, key press -> saved in corrections.csv -> counts shown, median / max | "
        f"{med(res['correction_ms']):.0f} / {max(res['correction_ms']):.0f} ms |",
        "",
        "Key presses: each press of a class key corrects the selected cell and selects the next one, so a "
        "correction costs one key when the cells to correct come one after another (flagged cells are shown "
        "first, lowest confidence first); passing over a cell that is right costs one more key (its class "
        "key, which also records it as confirmed, or an arrow key).",
        "",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--corrections", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True, help="Markdown table to write")
    ap.add_argument("--screenshot", type=Path, help="Also save a screenshot of the page (PNG)")
    ap.add_argument("--keep", type=Path, help="Keep the run folder here instead of a temporary one")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hemaedge-review-bench-") as tmp:
        run = make_run((args.keep or Path(tmp)) / "run", args.cells)
        res = measure(run, args.repeats, args.corrections, args.screenshot)
    command = "python -m hemaedge.review.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    text = table(res, command)
    from hemaedge.edge.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
