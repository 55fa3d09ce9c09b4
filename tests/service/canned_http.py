"""A loopback HTTP handler that answers canned responses, for client tests without a service."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


class CannedHandler(BaseHTTPRequestHandler):
    """Subclasses decide what to answer; this sends it (with its length) and keeps the test output quiet."""

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass
