"""The web page in a real browser: headless Chromium (Debian's package) driven by Playwright, against
`diffpir serve` with the tiny model on loopback, started by the test with a token.

A person's session, end to end: a wrong and a missing token shown as their messages, the token
typed; an image uploaded, a mask drawn with mouse strokes (brush and eraser), inpainting run, the
result shown before/after, the downloaded PNG equal to `diffpir restore` with the same image, the
page's mask and seed (<= 1/255); a deblurring run with a preset kernel, equal to `diffpir restore
--kernel` with the preset's file; an oversized image answered with its one-line message; nothing
of the server's paths on the page. Over HTTP: the progress stream of a running request (UNet calls
done of the total) and of a queued one (its place). Then the server stops and no process is left.

Screenshots (empty, with the drawn mask, with the result) go to $DIFFPIR_WEB_SCREENSHOTS, or the
test's temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpir_rt.client import encode_multipart
from diffpir_rt.engine.imageio import decode_image, read_image, read_image_and_depth, write_image

from .conftest import TEST_IMAGE, TOKEN, Inputs, alive, cli_restore, needs_ray, process_tree, start_server, stop_server

CHROMIUM = os.environ.get("DIFFPIR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def _browser_missing() -> str:
    if importlib.util.find_spec("playwright") is None:
        return 'the Python package playwright is not installed (pip install "diffpir-rt[web-test]")'
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set $DIFFPIR_CHROMIUM)"
    return ""


pytestmark = [needs_ray, pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "-")]
STEPS = "4"
ONE_LEVEL = 1 / 255 + 1e-6
SIZE = 48  # the page's images: 48x48 (2304 pixels); the server takes at most 4096


@pytest.fixture(scope="module")
def web_inputs(inputs: Inputs) -> dict[str, Path]:
    image = read_image(TEST_IMAGE)
    folder = inputs.folder / "web"
    folder.mkdir(exist_ok=True)
    return {
        "photo": write_image(folder / "photo.png", image[:, 90 : 90 + SIZE, 120 : 120 + SIZE]),
        "blurry": write_image(folder / "blurry.png", image[:, 20 : 20 + SIZE, 40 : 40 + SIZE], bit_depth=16),
        "large": write_image(folder / "large.png", image[:, :80, :80]),  # 6400 pixels: over --max-pixels 4096
    }


@pytest.fixture(scope="module")
def server(inputs: Inputs, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, warm_cache):
    log = tmp_path_factory.mktemp("web-log") / "serve.log"
    server = start_server(inputs, service_env, log, ["--token-file", str(inputs.token_file), "--max-pixels", "4096",
                                                     "--max-steps", "100", "--drain-timeout", "10"])  # fmt: skip
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("DIFFPIR_WEB_SCREENSHOTS") or tmp_path_factory.mktemp("web-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(server, shots: Path):
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                                                       viewport={"width": 1200, "height": 900}, accept_downloads=True)  # fmt: skip
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.problems = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda e: page.problems.append(str(e)))  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            browser_pids = [pid for pid in process_tree(os.getpid()) if "chrom" in _command(pid)]
            context.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(alive(pid) for pid in browser_pids):
                time.sleep(0.1)
            assert not [pid for pid in browser_pids if alive(pid)], "browser processes left"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _download(page, selector: str, out: Path) -> Path:
    with page.expect_download() as download:
        page.click(selector)
    download.value.save_as(out)
    return out


def _stroke(page, points: list[tuple[float, float]]) -> None:
    """A mouse stroke over the mask canvas; points in [0, 1] of its box."""
    box = page.locator("#mask").bounding_box()
    xy = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def _wait_until(page, expression: str, timeout: float = 60.0) -> None:
    """Poll a JS expression with page.evaluate: the page's CSP (script-src 'self') forbids the
    string eval that Playwright's wait_for_function compiles its predicate with."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for: {expression}")
        page.wait_for_timeout(100)


def _max_error(png: Path, reference: Path) -> float:
    got, _ = decode_image(png.read_bytes())
    return float((got - read_image(reference)).abs().max())


# ----------------------------------------------------------------------------- in the browser


def test_token_errors_then_the_empty_page(page, server, shots: Path) -> None:
    page.goto(server.url + "/")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert error.inner_text() == "missing bearer token (Authorization: Bearer <token>) (HTTP 401)"
    page.fill("#token", "not-the-token-000000")
    page.click("#token-form button")
    _wait_until(page, "document.getElementById('error').textContent.includes('wrong bearer token')")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#f-steps")
    assert page.locator("#error").is_hidden()
    # the forms come from /v1/info: every task, each method's cost, the advanced fold's parameters
    assert page.eval_on_selector_all("#task option", "o => o.map(x => x.value)") == ["deblur", "sr", "inpaint", "denoise"]
    assert "UNet calls" in page.inner_text("#method") and page.locator("#advanced-params [data-name=lam]").count() == 1
    assert page.evaluate("sessionStorage.getItem('diffpir-token')") == TOKEN
    assert page.evaluate("localStorage.length") == 0  # the token is kept for this tab only
    page.screenshot(path=str(shots / "web-empty.png"), full_page=True)


def test_inpainting_with_a_drawn_mask_equals_diffpir_restore(page, inputs: Inputs, web_inputs, shots: Path, tmp_path: Path) -> None:
    page.set_input_files("#files", str(web_inputs["photo"]))
    page.select_option("#task", "inpaint")
    page.locator("#stage canvas#mask").wait_for(state="visible")
    assert page.is_disabled("#run")  # no mask yet
    page.locator("#brush-size").fill("5")
    _stroke(page, [(0.1, 0.2), (0.5, 0.45), (0.9, 0.3)])
    _stroke(page, [(0.3, 0.9), (0.35, 0.6), (0.7, 0.7)])
    page.check("input[name=tool][value=eraser]")
    _stroke(page, [(0.45, 0.3), (0.55, 0.55)])
    page.check("input[name=tool][value=brush]")
    page.fill("#f-steps", STEPS)
    page.fill("#f-seed", "3")
    page.screenshot(path=str(shots / "web-mask.png"), full_page=True)
    mask = _download(page, "#mask-download", tmp_path / "mask.png")
    m = read_image(mask)
    assert m.shape[-2:] == (SIZE, SIZE)
    missing = float((m == 0).float().mean())
    assert 0.05 < missing < 0.6, missing  # the strokes made a hole; the eraser gave part of it back
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}

    page.click("#run")
    page.wait_for_selector("#compare-box:not([hidden])", timeout=120_000)
    assert page.locator("#result-error").is_hidden()
    _wait_until(page, "document.getElementById('after').complete && document.getElementById('after').naturalWidth > 0")
    page.locator("#split").fill("50")
    page.screenshot(path=str(shots / "web-result.png"), full_page=True)
    restored = _download(page, "#download-image", tmp_path / "restored.png")
    record = json.loads(_download(page, "#download-record", tmp_path / "restored.png.json").read_text())
    reference = cli_restore(inputs, tmp_path / "ref.png", ["--task", "inpaint", "--input", str(web_inputs["photo"]), "--mask", str(mask),
                                                           "--steps", STEPS, "--seed", "3"])  # fmt: skip
    assert _max_error(restored, reference) <= ONE_LEVEL
    assert (record["task"], record["seed"], record["config"]["steps"]) == ("inpaint", 3, 4)
    table = page.inner_text("#record")
    assert "runtime path" in table and "tiny" in table and record["runtime"]["path"]["name"] in table
    # zoom on a region and back
    page.click("#zoom-in")
    assert page.inner_text("#zoom-level") == "200 %"
    page.click("#zoom-fit")
    # nothing of the server's files on the page: its temporary folders, the checkpoint's directory
    text = page.inner_text("body") + page.text_content("#record-json")
    assert '"task": "inpaint"' in text and "tiny.safetensors" in text  # the whole record is there, its paths cut to file names
    assert str(inputs.folder) not in text and str(inputs.cache) not in text and "/tmp/" not in text
    assert not page.problems  # type: ignore[attr-defined]


def test_deblurring_with_a_preset_kernel_keeps_16_bits(page, server, inputs: Inputs, web_inputs, tmp_path: Path) -> None:
    page.click("#thumbs .remove")
    page.set_input_files("#files", str(web_inputs["blurry"]))
    page.select_option("#task", "deblur")
    page.check("input[data-kernel='levin-3']", force=True)
    page.fill("#f-steps", STEPS)
    page.fill("#f-seed", "5")
    page.click("#run")
    page.wait_for_selector("#compare-box:not([hidden])", timeout=120_000)
    restored = _download(page, "#download-image", tmp_path / "restored.png")
    kernel = tmp_path / "levin-3.npy"
    kernel.write_bytes(urllib.request.urlopen(server.url + "/web/kernels/levin-3.npy", timeout=30).read())
    from diffpir_rt.runtime import kernel_preset

    np.testing.assert_array_equal(np.load(kernel), kernel_preset("levin-3").array())
    reference = cli_restore(inputs, tmp_path / "ref.png", ["--task", "deblur", "--input", str(web_inputs["blurry"]), "--kernel", str(kernel),
                                                           "--steps", STEPS, "--seed", "5"])  # fmt: skip
    got, depth = read_image_and_depth(restored)
    want, want_depth = read_image_and_depth(reference)
    assert depth == want_depth == 16  # 16 bit in, 16 bit out
    assert float((got - want).abs().max()) <= 2 / 65535 + 1e-6
    assert "levin-3.npy" in page.text_content("#record-json")


def test_an_oversized_image_shows_its_one_line_message(page, web_inputs) -> None:
    page.click("#thumbs .remove")
    page.set_input_files("#files", str(web_inputs["large"]))
    page.select_option("#task", "denoise")
    page.click("#run")
    error = page.locator("#result-error")
    error.wait_for(state="visible", timeout=60_000)
    message = error.inner_text()
    assert message.startswith("large.png: image large.png: 80x80 is 6,400 pixels; at most 4,096 are accepted") and message.endswith("(HTTP 413)")
    assert "\n" not in message and "Traceback" not in message
    assert page.locator("#compare-box").is_hidden()


# ----------------------------------------------------------------------------- progress, over HTTP


def _stream(url: str, lines: list[dict]) -> threading.Thread:
    def read() -> None:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            for line in response:
                lines.append(json.loads(line))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _restore(server, fields: list, request_id: str) -> int:
    body, content_type = encode_multipart(fields)
    request = urllib.request.Request(server.url + "/v1/restore", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}", "X-Request-Id": request_id})  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["X-Request-Id"] == request_id
        return json.loads(response.headers["X-DiffPIR-Record"])["model_calls"]


def test_progress_of_a_running_and_a_queued_request(server, inputs: Inputs, web_inputs) -> None:
    long_id, short_id = "a1" * 16, "b2" * 16
    long_lines: list[dict] = []
    short_lines: list[dict] = []
    readers = [_stream(f"{server.url}/v1/progress/{long_id}", long_lines), _stream(f"{server.url}/v1/progress/{short_id}", short_lines)]
    image = ("photo.png", web_inputs["photo"].read_bytes())
    results: dict[str, int] = {}
    long = threading.Thread(target=lambda: results.update(long=_restore(server, [("task", "denoise"), ("steps", "100"), ("image", image)], long_id)))
    long.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(line.get("state") == "running" for line in long_lines):
        time.sleep(0.05)
    # another size cannot share its batch: it waits behind the running one
    results["short"] = _restore(server, [("task", "denoise"), ("steps", STEPS), ("image", ("c.png", inputs.clean.read_bytes()))], short_id)
    long.join(120)
    for reader in readers:
        reader.join(30)
    running = [line for line in long_lines if line["state"] == "running"]
    assert running and all(line["total"] == results["long"] for line in running)
    assert [line["done"] for line in running] == sorted(line["done"] for line in running)
    assert long_lines[0]["state"] == "waiting" and long_lines[-1]["state"] == "ended"
    assert any(line["state"] == "queued" and line["ahead"] >= 1 for line in short_lines), short_lines
    assert short_lines[-1]["state"] == "ended"


def test_the_server_stops_and_leaves_no_process(server) -> None:
    tree = process_tree(server.proc.pid)
    assert stop_server(server) == 0
    time.sleep(1.0)
    assert not [pid for pid in tree if alive(pid)]
