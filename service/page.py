"""The web page of `diffpir serve`: a static page served by the ingress at `/`, and its helpers.

Routes (the ingress calls `answer` for every route `handles` accepts):

- `GET /` and `GET /web/<file>`: the page (service/web/: one HTML file, one script, one style
  sheet; no framework, no build step, nothing fetched from elsewhere). No token: the page must
  load before its user has typed one; it holds nothing but code.
- `GET /web/kernels/<preset>.npy|.png`: a preset blur kernel (runtime.kernel_presets) as the
  `.npy` file the page uploads as the restore's `kernel`, or as a picture for the picker.
  Engine constants, no token.
- `GET /v1/progress/<request id>` (token): the request's progress as JSON lines (service/progress.py).
- `POST /v1/preview` (token): the raw bytes of an image the browser cannot show (TIFF, ...)
  -> an 8-bit PNG of it, upright as the restore reads it (EXIF orientation applied), within the
  server's body and pixel limits.

The restore itself is the API's `POST /v1/restore`, with the form's declared fields: the page
is a client of the API like `diffpir request`, so the token, limits, batching and errors are
the API's.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from .forms import RequestError
from .progress import REQUEST_ID, kv_read, progress_stream

WEB = Path(__file__).parent / "web"
STATIC_PREFIX = "/web/"
KERNELS_PREFIX = "/web/kernels/"
PROGRESS_PREFIX = "/v1/progress/"
PREVIEW_ROUTE = "/v1/preview"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".png": "image/png", ".svg": "image/svg+xml", ".npy": "application/octet-stream"}  # fmt: skip
#: The page runs only its own script and talks only to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}  # fmt: skip
_ASSET = re.compile(r"[a-z0-9_-]+\.(html|js|css|svg|png)")


def handles(route: str) -> bool:
    """Whether `route` (the path without a trailing slash) belongs to the page."""
    return route == "/" or route.startswith(STATIC_PREFIX) or route.startswith(PROGRESS_PREFIX) or route == PREVIEW_ROUTE


async def answer(request: Request, route: str, settings: Any, authorise: Callable[[Request], None]) -> Response:
    """The page's answer to `route` (raises RequestError like the API's routes)."""
    if route.startswith("/v1/"):
        authorise(request)
        if route == PREVIEW_ROUTE:
            _method(request, "POST")
            return await _preview(request, settings)
        _method(request, "GET")
        return _progress(route[len(PROGRESS_PREFIX):], settings)
    _method(request, "GET")
    if route.startswith(KERNELS_PREFIX):
        return _kernel(route[len(KERNELS_PREFIX):], request)
    name = "index.html" if route == "/" else route[len(STATIC_PREFIX):]
    if not _ASSET.fullmatch(name) or not (WEB / name).is_file():
        raise RequestError(404, f"{route[:80]}: not found; the page is at /")
    return _static(name, request)


def _method(request: Request, expected: str) -> None:
    if request.method != expected and not (expected == "GET" and request.method == "HEAD"):
        raise RequestError(405, f"{request.method} {request.url.path[:80]}: use {expected}")


# ----------------------------------------------------------------------------- static files


@lru_cache(maxsize=None)
def _asset(name: str) -> tuple[bytes, bytes, str]:
    """A page file, gzipped, and its ETag (read and compressed once per ingress process)."""
    data = (WEB / name).read_bytes()
    return data, gzip.compress(data, mtime=0), '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _static(name: str, request: Request) -> Response:
    data, packed, etag = _asset(name)
    # the script is three quarters of the page's bytes; gzip takes it to about a third
    if "gzip" in request.headers.get("accept-encoding", "") and len(packed) < len(data):
        return _cached(packed, etag[:-1] + '-gz"', CONTENT_TYPES[Path(name).suffix], request, {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    return _cached(data, etag, CONTENT_TYPES[Path(name).suffix], request, {"Vary": "Accept-Encoding"})


def _cached(data: bytes, etag: str, media_type: str, request: Request, extra: dict[str, str] | None = None) -> Response:
    # no-cache: the browser revalidates (a 304 when unchanged), so an upgraded server is seen at once
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache", **(extra or {})}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(b"" if request.method == "HEAD" else data, media_type=media_type, headers=headers)


@lru_cache(maxsize=64)
def kernel_file(name: str, kind: str) -> bytes:
    """A preset kernel as a `.npy` (float32, what the page uploads) or as an 8-bit grey PNG scaled to its peak (for display)."""
    import io

    import numpy as np

    from diffpir_rt.engine import imageio
    from diffpir_rt.runtime import kernel_preset

    array = kernel_preset(name).array()
    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, array.astype(np.float32), allow_pickle=False)
        return buffer.getvalue()
    import torch

    picture = torch.from_numpy(array / max(float(array.max()), 1e-12))[None].float()
    return imageio.encode_image(picture, "png", 8)


def _kernel(name: str, request: Request) -> Response:
    from diffpir_rt.errors import DiffPIRError

    stem, _, kind = name.rpartition(".")
    if kind not in ("npy", "png"):
        raise RequestError(404, f"kernel preset {name[:60]!r}: not found; use <preset>.npy or <preset>.png")
    try:
        data = kernel_file(stem, kind)
    except DiffPIRError as e:
        raise RequestError(404, str(e)) from None
    return _cached(data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"', CONTENT_TYPES["." + kind], request)


# ----------------------------------------------------------------------------- progress and preview


def _progress(request_id: str, settings: Any) -> Response:
    if not REQUEST_ID.fullmatch(request_id):
        raise RequestError(400, f"request id {request_id[:70]!r}: expected 8-64 letters, digits, '-' or '_' (the X-Request-Id the restore was sent with)")
    limit = settings.request_timeout_s + settings.read_timeout_s + 5.0
    return StreamingResponse(progress_stream(request_id, kv_read, limit), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})  # fmt: skip


async def _preview(request: Request, settings: Any) -> Response:
    """An 8-bit PNG of an uploaded image (the raw file as the body), decoded as a restore decodes it."""
    from diffpir_rt.errors import DiffPIRError, TooLargeError

    name = re.sub(r"[^\w. -]", "_", request.headers.get("x-file-name", "image"))[:80] or "image"
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        raise RequestError(413, f"body: {int(length):,} bytes; at most {settings.max_body_bytes:,} are accepted (--max-body-bytes)")
    chunks: list[bytes] = []

    async def read() -> None:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > settings.max_body_bytes:
                raise RequestError(413, f"body: more than {settings.max_body_bytes:,} bytes; at most {settings.max_body_bytes:,} are accepted")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout=settings.read_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"body: not received within {settings.read_timeout_s:g} s (--read-timeout)") from None
    except ClientDisconnect:
        raise RequestError(400, "body: the client closed the connection") from None
    data = b"".join(chunks)
    if not data:
        raise RequestError(415, f"image {name}: empty upload")

    def convert() -> bytes:
        from diffpir_rt.engine import imageio

        image, _ = imageio.decode_image(data, f"image {name}", settings.max_pixels)
        return imageio.encode_image(image, "png", 8)

    start = time.perf_counter()
    try:
        png = await asyncio.to_thread(convert)
    except TooLargeError as e:
        raise RequestError(413, str(e)) from None
    except DiffPIRError as e:
        raise RequestError(415, str(e)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store", "X-Preview-Seconds": f"{time.perf_counter() - start:.3f}"})

