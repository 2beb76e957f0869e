"""Serving the API with uvicorn on a Unix socket (identity from the kernel) and,
optionally, on TCP (identity from a trusted proxy header or a bearer token).

uvicorn does not give the application the connection's socket, so a subclass of its
h11 protocol reads SO_PEERCRED when the connection is made and wraps the application
of that connection (protocol objects are per connection) so that every request's ASGI
scope carries `cigri.peer = {"pid", "uid", "gid", "user"}`. Nothing a client sends can
set or change it."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cigri.api.auth import PEER_SCOPE_KEY, load_secret
from cigri.config import Conf

log = logging.getLogger("cigri.api")
_CRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> dict[str, Any] | None:
    """pid, uid, gid and login of the process at the other end of a Unix socket."""
    if sock.family != socket.AF_UNIX:
        return None
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    return {"pid": pid, "uid": uid, "gid": gid, "user": user}


class _WithPeer:
    """ASGI wrapper adding the connection's peer credentials to each scope."""

    def __init__(self, app: Any, peer: dict[str, Any]) -> None:
        self.app = app
        self.peer = peer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope = dict(scope)
        scope[PEER_SCOPE_KEY] = dict(self.peer)
        await self.app(scope, receive, send)


class PeerCredH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            try:
                peer = peer_credentials(sock)
            except OSError:
                peer = {"pid": 0, "uid": -1, "gid": -1, "user": None}
            if peer is not None:
                self.app = _WithPeer(self.app, peer)
        super().connection_made(transport)


def unix_listener(path: str) -> socket.socket:
    """Bind the API socket world-connectable (identity comes from the kernel, not from access rights)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        if stat.S_ISSOCK(p.lstat().st_mode):
            p.unlink()
        else:
            raise OSError(f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o666)
    s.listen(512)
    s.setblocking(False)
    return s


def tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(512)
    s.setblocking(False)
    return s


def systemd_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0") or 0)
    out = []
    for fd in range(3, 3 + n):
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        out.append(s)
    return out


def serve(conf: Conf, socket_path: str | None = None, host: str | None = None, port: int | None = None,
          log_level: str = "warning", workers: int = 1) -> None:
    secret_file = conf.get("API_JWT_SECRET_FILE")
    if secret_file and load_secret(secret_file, create=True) is None:
        log.warning("JWT secret %s unavailable: bearer tokens disabled", secret_file)
    sockets = systemd_sockets()
    if not sockets:
        path = socket_path if socket_path is not None else conf.get("API_LISTEN_SOCKET")
        if path:
            sockets.append(unix_listener(path))
        h = host if host is not None else conf.get("API_LISTEN_HOST")
        if h:
            sockets.append(tcp_listener(h, int(port if port is not None else conf.get("API_LISTEN_PORT"))))
    if not sockets:
        raise SystemExit("cigri-api: nothing to listen on (set API_LISTEN_SOCKET or API_LISTEN_HOST)")
    for s in sockets:
        log.info("cigri-api listening on %s", s.getsockname() or s)
    import tempfile

    from cigri.api import state

    gen_fd, gen_path = tempfile.mkstemp(prefix="cigri-api-writes-")
    os.close(gen_fd)
    state.GENERATION_FILE = gen_path  # inherited by the workers forked below
    try:
        _serve_workers(conf, sockets, log_level, workers)
    finally:
        try:
            os.unlink(gen_path)
        except OSError:
            pass


def _serve_workers(conf: Conf, sockets: list[socket.socket], log_level: str, workers: int) -> None:
    if workers <= 1:
        _run(conf, sockets, log_level)
        return
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # worker: its own engine and event loop (neither is fork-safe)
            try:
                _run(conf, sockets, log_level)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while children:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        if pid in children:
            children.remove(pid)
            forward(signal.SIGTERM, None)  # one worker died: stop all, systemd restarts the service


def _run(conf: Conf, sockets: list[socket.socket], log_level: str) -> None:
    from cigri.api.app import create_app

    app = create_app(conf)
    config = uvicorn.Config(app, http=PeerCredH11Protocol, lifespan="off", proxy_headers=False,
                            server_header=False, log_level=log_level, access_log=log_level == "debug",
                            timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=sockets)
