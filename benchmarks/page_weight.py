"""What a web page costs its user on first load: bytes and requests transferred, and the time until
a given element is visible (the page usable), in headless Chromium with a fresh profile per load.

    python -m diffpir_rt.benchmarks.page_weight --url http://127.0.0.1:8000/ --selector "#f-steps" --loads 3

docs/service.md (§ Why a static page, not Gradio) compares `diffpir serve`'s page ("#f-steps":
its form built from /v1/info) with a minimal Gradio app with the same widgets (its button
visible; `--gradio-demo` prints that app). Needs the `playwright` package and a Chromium (Debian's: `apt-get install chromium`);
it never downloads a browser.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlparse

#: The Gradio app of the comparison (`--gradio-demo` prints it; run it with gradio installed: `python demo.py PORT`).
GRADIO_DEMO = """import sys
import gradio as gr

with gr.Blocks() as demo:
    with gr.Row():
        editor = gr.ImageEditor(label="image and mask")
        slider = gr.ImageSlider(label="before / after")
    task = gr.Dropdown(["deblur", "sr", "inpaint", "denoise"], label="task")
    method = gr.Dropdown(["diffpir", "ddnm", "dps"], label="method")
    with gr.Accordion("advanced", open=False):
        lam = gr.Number(label="lam")
        zeta = gr.Number(label="zeta")
    run = gr.Button("Restore")
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]))
"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def measure(url: str, selector: str, loads: int, chromium: str) -> list[dict[str, Any]]:
    """One row per load: seconds until `selector` is visible, first contentful paint, requests, bytes, hosts reached."""
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        for _ in range(loads):
            with tempfile.TemporaryDirectory() as profile:
                context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=FLAGS)
                page = context.new_page()
                sizes: list[int] = []
                hosts: set[str] = set()
                page.on("requestfinished", lambda r, sizes=sizes: sizes.append(r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"]))
                page.on("request", lambda r, hosts=hosts: hosts.add(urlparse(r.url).hostname or ""))
                start = time.perf_counter()
                page.goto(url, wait_until="commit")
                page.wait_for_selector(selector, state="visible", timeout=120_000)
                usable = time.perf_counter() - start
                page.wait_for_load_state("networkidle", timeout=120_000)
                paint = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
                rows.append({"usable_s": round(usable, 3), "first_paint_ms": paint, "requests": len(sizes), "bytes": sum(sizes),
                             "hosts": sorted(h for h in hosts if h)})  # fmt: skip
                context.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffpir_rt.benchmarks.page_weight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--selector", help="CSS selector of the element that makes the page usable")
    parser.add_argument("--gradio-demo", action="store_true", help="print the Gradio app of the comparison and exit")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if args.gradio_demo:
        print(GRADIO_DEMO, end="")
        return 0
    if not args.url or not args.selector:
        parser.error("--url and --selector are required")
    rows = measure(args.url, args.selector, args.loads, args.chromium)
    summary = {"url": args.url, "selector": args.selector, "loads": rows,
               "median_usable_s": statistics.median(r["usable_s"] for r in rows),
               "median_bytes": statistics.median(r["bytes"] for r in rows)}  # fmt: skip
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
