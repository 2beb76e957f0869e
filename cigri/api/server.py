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
import time
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
    """uvicorn's HTTP/1.1 protocol, plus the peer's credentials and limits on slow clients:
    a request's headers must arrive within `header_timeout` seconds of its first byte (of
    the connection, for the first request), its body must not pause longer than
    `body_timeout` seconds, and a worker keeps at most `max_connections` connections
    (uvicorn answers 503 to requests beyond them; connections beyond twice as many are
    closed at once). Set from cigri.conf by cigri.api.server._run."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            try:
                peer = peer_credentials(sock)
            except OSError:
                peer = {"pid": 0, "uid": -1, "gid": -1, "user": None}
            if peer is not None:
                self.app = _WithPeer(self.app, peer)
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > 2 * self.max_connections:
            transport.close()
            return
        self._arm(self.header_timeout)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """The client did not send what we wait for (headers, or the next part of a body) in time."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or self.cycle.more_body:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            if self._deadline is None:  # the headers' deadline runs from their first byte, not reset per byte
                self._arm(self.header_timeout)
        elif self.cycle.more_body:
            self._arm(self.body_timeout)
        else:
            self._disarm()  # the application has the whole request

    def on_response_complete(self) -> None:
        self._disarm()  # idle until the next request: uvicorn's keep-alive timeout
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


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
          log_level: str = "warning", workers: int = 1, idle_exit: float = 0) -> None:
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
        if idle_exit > 0:  # started on demand (local mode): one worker, gone when unused
            _run(conf, sockets, log_level, idle_exit)
        else:
            _serve_workers(conf, sockets, log_level, workers)
    finally:
        try:
            os.unlink(gen_path)
        except OSError:
            pass


def _serve_workers(conf: Conf, sockets: list[socket.socket], log_level: str, workers: int) -> None:
    """Fork `workers` processes serving the shared sockets, and replace any that dies
    (killed, crashed): the API stays up. SIGTERM/SIGINT stop them all."""
    if workers <= 1:
        _run(conf, sockets, log_level)
        return
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # worker: its own engine and event loop (neither is fork-safe)
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _run(conf, sockets, log_level)
                code = 0
            finally:
                os._exit(code)
        children.add(pid)

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for c in list(children):
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    last_deaths: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        children.discard(pid)
        if stopping:
            continue
        log.error("cigri-api worker %d died (%s): starting another", pid, _exit_text(status))
        now = time.monotonic()
        last_deaths = [t for t in last_deaths if now - t < 60] + [now]
        if len(last_deaths) > 10 * workers:  # dying at start-up: a replacement would die too
            log.error("cigri-api workers keep dying: stopping")
            stop(signal.SIGTERM, None)
            raise SystemExit(1)
        spawn()


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _exit_when_idle(server: uvicorn.Server, idle: float) -> None:
    """Stop the server once no request came and no connection was open for `idle` seconds."""
    seen, since = -1, time.monotonic()
    while not server.should_exit:
        time.sleep(min(5.0, idle / 4))
        state = server.server_state
        if state.total_requests != seen or state.connections:
            seen, since = state.total_requests, time.monotonic()
        elif time.monotonic() - since > idle:
            log.info("cigri-api: idle for %.0f s, exiting", idle)
            server.should_exit = True


def _run(conf: Conf, sockets: list[socket.socket], log_level: str, idle_exit: float = 0) -> None:
    from cigri.api.app import create_app

    app = create_app(conf)
    PeerCredH11Protocol.header_timeout = float(conf.get("API_HEADER_TIMEOUT"))
    PeerCredH11Protocol.body_timeout = float(conf.get("API_BODY_TIMEOUT"))
    PeerCredH11Protocol.max_connections = int(conf.get("API_MAX_CONNECTIONS"))
    config = uvicorn.Config(app, http=PeerCredH11Protocol, lifespan="off", proxy_headers=False,
                            server_header=False, log_level=log_level, access_log=log_level == "debug",
                            timeout_keep_alive=30, limit_concurrency=PeerCredH11Protocol.max_connections,
                            h11_max_incomplete_event_size=64 * 1024)
    server = uvicorn.Server(config)
    if idle_exit > 0:
        import threading

        threading.Thread(target=_exit_when_idle, args=(server, idle_exit), daemon=True).start()
    server.run(sockets=sockets)
