"""A faulty HTTP proxy in front of a real cluster API (the OAR testbed), for the faults a
real network or a broken front end produces: answers cut short, junk bytes, a server that
closes the connection after answering.

`fault(method, path, query) -> Fault | None` is asked for every request; the request is
always forwarded upstream first (so the cluster really does what was asked), then the
answer is spoiled as the fault says."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import requests


@dataclass
class Fault:
    #: "truncate": send the headers (true Content-Length) and `keep` bytes of the body, then
    #: close; "garble": answer the status with `body` instead of the real body; "replace":
    #: substitute `old` by `new` in the body
    kind: str
    keep: int = 0
    body: bytes = b""
    old: bytes = b""
    new: bytes = b""


FaultRule = Callable[[str, str, str], Fault | None]
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class _Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def _do(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
        prefix = urlsplit(self.server.upstream).path.rstrip("/")
        path = parts.path
        upstream = self.server.upstream.rstrip("/") + (path[len(prefix):] if path.startswith(prefix) else path)
        if parts.query:
            upstream += "?" + parts.query
        resp = requests.request(self.command, upstream, data=body, headers=headers, timeout=120)
        content = resp.content
        fault = self.server.fault(self.command, path, parts.query)
        if fault is not None:
            self.server.faults.append((self.command, path, fault.kind))
        if fault is not None and fault.kind == "garble":
            content = fault.body
        elif fault is not None and fault.kind == "replace":
            content = content.replace(fault.old, fault.new)
        self.send_response(resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if fault is not None and fault.kind == "truncate":
            self.wfile.write(content[:fault.keep])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(content)

    do_GET = do_POST = do_DELETE = do_PUT = _do

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def fault_proxy(upstream: str, fault: FaultRule) -> Iterator[Any]:
    """Yields the server: `.url` (same path as `upstream`), `.faults` (what was spoiled)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    srv.daemon_threads = True
    srv.upstream = upstream  # type: ignore[attr-defined]
    srv.fault = fault  # type: ignore[attr-defined]
    srv.faults = []  # type: ignore[attr-defined]
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}{urlsplit(upstream).path}"  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
