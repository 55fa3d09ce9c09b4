"""The web page's pieces without a server or a browser: the progress board a restorer replica keeps
(records per request, places in the queue, removal when a request ends, a bounded store), the
progress stream the ingress answers, and the preset kernels (checked against independent
references: scipy's Gaussian filter written out here, Levin's file read with h5py directly)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from diffpir_rt.runtime import kernel_preset, kernel_presets
from diffpir_rt.runtime import describe_service
from diffpir_rt.service.progress import ProgressBoard, progress_stream

LEVIN = Path(__file__).parents[1] / "data" / "kernels" / "Levin09.mat"


class _Store:
    def __init__(self) -> None:
        self.data: dict[str, dict] = {}
        self.writes = 0

    def put(self, request_id: str, record: dict) -> None:
        self.writes += 1
        self.data[request_id] = record

    def delete(self, request_id: str) -> None:
        self.data.pop(request_id, None)


class _Entry:  # the replica's object for a request: only its identity matters to the board
    pass


def _board() -> tuple[ProgressBoard, _Store]:
    store = _Store()
    board = ProgressBoard(put=store.put, delete=store.delete)
    board._kick = lambda: None  # no publisher thread: the test calls publish() itself  # type: ignore[method-assign]
    return board, store


def test_board_counts_unet_calls_and_places_in_the_queue() -> None:
    board, store = _board()
    a, b, c = _Entry(), _Entry(), _Entry()
    board.add(a, "a" * 32, total=3)
    board.add(b, "b" * 32, total=5)
    board.add(c, "c" * 32, total=5)
    board.publish()
    assert [store.data[x * 32]["ahead"] for x in "abc"] == [0, 1, 2]
    assert all(store.data[x * 32]["state"] == "queued" for x in "abc")
    board.start([a])
    for t in (10, None, 5, 1):  # a step without a UNet call (t None) does not count
        board.step([a], {"i": 0, "t": t})
    board.publish()
    running = store.data["a" * 32]
    assert (running["state"], running["done"], running["total"], running["batch"]) == ("running", 3, 3, 1)
    assert running["eta_s"] == 0.0
    assert [store.data[x * 32]["ahead"] for x in "bc"] == [1, 2]  # the running one is still ahead of them
    board.remove(a)
    board.publish()
    assert "a" * 32 not in store.data and [store.data[x * 32]["ahead"] for x in "bc"] == [0, 1]
    board.start([b, c])
    board.step([b, c], {"i": 0, "t": 999})
    board.publish()
    assert store.data["b" * 32]["batch"] == 2 and store.data["c" * 32]["done"] == 1
    writes = store.writes
    board.publish()  # nothing changed: nothing written
    assert store.writes == writes
    board.remove(b)
    board.remove(c)
    board.publish()
    assert store.data == {} and len(board) == 0  # nothing left once every request ended


def test_board_ignores_requests_without_a_usable_id_and_survives_a_failing_store() -> None:
    board, store = _board()
    board.add(_Entry(), "../../etc", total=4)  # not an id the page or Serve makes
    board.publish()
    assert store.data == {}

    def broken(*args) -> None:
        raise ConnectionError("GCS gone")

    board = ProgressBoard(put=broken, delete=broken)
    board._kick = lambda: None  # type: ignore[method-assign]
    entry = _Entry()
    board.add(entry, "d" * 32, total=2)
    board.publish()  # progress is information: a broken store never fails the restore
    board.remove(entry)
    board.publish()


def test_board_publishes_from_its_own_thread() -> None:
    store = _Store()
    board = ProgressBoard(put=store.put, delete=store.delete, interval=0.01)
    entry = _Entry()
    board.add(entry, "e" * 32, total=2)
    for _ in range(200):
        if "e" * 32 in store.data:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert store.data["e" * 32]["state"] == "queued"
    board.remove(entry)
    for _ in range(200):
        if not store.data:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert store.data == {}


def test_progress_stream_follows_a_record_until_it_is_gone() -> None:
    states = iter([None, {"state": "queued", "ahead": 1}, {"state": "queued", "ahead": 1},
                   {"state": "running", "done": 1, "total": 2}, {"state": "running", "done": 2, "total": 2}, None])  # fmt: skip

    async def collect(limit_s: float, read) -> list[dict]:
        return [json.loads(line) async for line in progress_stream("f" * 32, read, limit_s, poll_s=0.001)]

    lines = asyncio.run(collect(10.0, lambda _id: next(states)))
    assert [line["state"] for line in lines] == ["waiting", "queued", "running", "running", "ended"]  # repeats not sent
    # a request that never shows up: the stream ends at its limit
    lines = asyncio.run(collect(0.05, lambda _id: None))
    assert [line["state"] for line in lines] == ["waiting", "ended"]


# ----------------------------------------------------------------------------- preset kernels


def _scipy_gaussian(std: float, size: int) -> np.ndarray:
    """The official Gaussian kernel written out: a centred delta through scipy's gaussian_filter (truncate 4, reflect)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return gaussian_filter(delta, sigma=std).astype(np.float32)


def test_gaussian_presets_are_the_official_kernel_on_a_smaller_square() -> None:
    for preset in (p for p in kernel_presets() if p.std is not None):
        k = preset.array()
        official = _scipy_gaussian(preset.std, 61)
        c, r = 30, preset.size // 2
        assert k.shape == (preset.size, preset.size) and k.dtype == np.float32
        np.testing.assert_array_equal(k, official[c - r : c + r + 1, c - r : c + r + 1])
        assert float(official.sum() - k.sum()) == pytest.approx(0.0, abs=1e-6)  # nothing of it is cut off


def test_levin_presets_are_the_eight_kernels_of_the_file() -> None:
    import h5py

    with h5py.File(LEVIN, "r") as f:  # MATLAB v7.3: a cell of references, each matrix stored transposed
        refs = f["kernels"][()].ravel()
        expected = [np.asarray(f[ref][()], dtype=np.float32).T for ref in refs]
    levin = [p for p in kernel_presets() if p.levin_index is not None]
    assert len(levin) == 8
    for preset, want in zip(levin, expected, strict=True):
        np.testing.assert_allclose(preset.array(), want, rtol=0, atol=1e-7)  # stored with sum 1 (to 1e-7)
        assert preset.size == want.shape[0]


def test_presets_are_listed_in_the_catalogue_and_their_files_load_as_kernels() -> None:
    from diffpir_rt.engine import InputFile, degrade
    from diffpir_rt.service.page import kernel_file

    listed = describe_service()["presets"]["kernel"]
    assert [p["name"] for p in listed] == [p.name for p in kernel_presets()]
    for name in ("gaussian-2", "levin-4"):
        loaded = degrade.load_kernel(InputFile.from_bytes(f"{name}.npy", kernel_file(name, "npy"), "kernel"))
        np.testing.assert_array_equal(loaded, kernel_preset(name).array())
        picture = kernel_file(name, "png")
        assert picture[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="unknown"):
        kernel_preset("levin-9")


# ----------------------------------------------------------------------------- the page's files


def _get(path: str, headers: dict[str, str]):
    from starlette.requests import Request

    from diffpir_rt.service import page

    scope = {"type": "http", "method": "GET", "path": path, "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return asyncio.run(page.answer(Request(scope), path.rstrip("/") or "/", settings=None, authorise=lambda r: None))


def test_page_files_are_served_gzipped_when_asked_and_revalidated_by_etag() -> None:
    import gzip

    script = (Path(__file__).parents[2] / "service" / "web" / "page.js").read_bytes()
    plain = _get("/web/page.js", {})
    assert plain.body == script and "content-encoding" not in plain.headers
    packed = _get("/web/page.js", {"Accept-Encoding": "gzip, deflate, br"})
    assert packed.headers["content-encoding"] == "gzip" and gzip.decompress(packed.body) == script
    assert len(packed.body) < len(script) / 2 and packed.headers["etag"] != plain.headers["etag"]
    assert _get("/web/page.js", {"If-None-Match": plain.headers["etag"]}).status_code == 304
    assert "default-src 'self'" in _get("/", {}).headers["content-security-policy"]
