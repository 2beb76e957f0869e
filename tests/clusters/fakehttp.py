"""A real HTTP server on 127.0.0.1 in a thread, driven by a handler function (fault injection
and the fake OAR 3 API). `handler(method, path, query, headers, body) -> (status, headers, body)`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

Handler = Callable[[str, str, list[tuple[str, str]], dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


class _Req(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def _do(self) -> None:
        if getattr(self, "dead", False):
            # the server closed this connection after its 5xx: a request sent on it gets no answer
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        self.server.requests.append((self.command, parts.path, parse_qsl(parts.query), headers, body))
        status, out_headers, out = self.server.handler(self.command, parts.path, parse_qsl(parts.query),
                                                       headers, body)
        self.send_response(status)
        for k, v in out_headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
        if status >= 500 and getattr(self.server, "close_after_5xx", False):
            self.dead = True  # as uvicorn: no `Connection: close` header, the connection is gone

    do_GET = do_POST = do_DELETE = do_PUT = _do

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


@contextmanager
def serve(handler: Handler, close_after_5xx: bool = False) -> Iterator[Any]:
    """Yields the server; `server.url` is its base URL, `server.requests` what it received.
    `close_after_5xx`: after a 5xx answer the connection is dead, as with uvicorn (OAR 3),
    which closes it without a `Connection: close` header."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Req)
    srv.close_after_5xx = close_after_5xx  # type: ignore[attr-defined]
    srv.daemon_threads = True
    srv.handler = handler  # type: ignore[attr-defined]
    srv.requests = []  # type: ignore[attr-defined]
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/oarapi/"  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
