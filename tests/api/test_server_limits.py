"""The real server, started as the shipped unit starts it (user cigri): slow clients are cut
off and connections capped (#10 item 9), a dead worker is replaced (#11 item 6), and the
server holds no root rights (#10, "the API does not need root")."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import API_USER, JDL, Server, start_server


def _workers(server: Server) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                out.add(int(d.name))
    return out


def _started_workers(server: Server) -> set[int]:
    """The workers, once the server has forked them (it listens first)."""
    deadline = time.monotonic() + 60
    while len(w := _workers(server)) < 2:
        assert time.monotonic() < deadline, "the server did not start its workers"
        time.sleep(0.1)
    return w


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective uid
    raise AssertionError("no Uid line")


def _closed_by_server(s: socket.socket, deadline: float) -> bool:
    """Wait (at most until `deadline`) for the server to close `s`."""
    while time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if s.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def test_server_runs_as_cigri_and_never_reads_user_files(server: Server, clusters: dict[str, int]) -> None:
    cigri_uid = pwd.getpwnam(API_USER).pw_uid
    assert _uid(server.proc.pid) == cigri_uid
    assert {_uid(w) for w in _started_workers(server)} == {cigri_uid}
    # a raw client naming a file in its own home: refused, not read (gridsub sends lines instead)
    jdl = {k: v for k, v in JDL.items() if k != "nb_jobs"} | {"param_file": "/etc/passwd"}
    r = server.run("gridsub", "-j", json.dumps(jdl), user="alice")
    assert r.returncode == 1 and "never opens files named by users" in r.stderr, r.stderr


def test_slow_headers_are_cut_off(server: Server, clusters: dict[str, int]) -> None:
    """Clients that never finish their headers (API_HEADER_TIMEOUT = 2 in this server's
    configuration) are disconnected; a normal client is served meanwhile."""
    slow = []
    for i in range(10):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"GET /campaigns HTTP/1.1\r\nHost: x\r\nX-Slow-" + str(i).encode())
        slow.append(s)
    assert server.run("gridstat", user="alice").returncode == 0
    deadline = time.monotonic() + 60
    try:
        assert all(_closed_by_server(s, deadline) for s in slow)
    finally:
        for s in slow:
            s.close()
    # a body that stops half way is cut off as well, and the rest of the server is fine
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /campaigns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"name\":")
    try:
        assert _closed_by_server(s, time.monotonic() + 90)
    finally:
        s.close()
    assert server.run("gridstat", user="alice").returncode == 0


@pytest.fixture(scope="module")
def capped_server(pg_dbname: str) -> Iterator[Server]:
    """A server whose idle connections are not cut off by the header timeout, with a low cap."""
    yield from start_server(pg_dbname, {"API_HEADER_TIMEOUT": "600", "API_MAX_CONNECTIONS": "8"})


def test_connections_are_capped(capped_server: Server, clusters: dict[str, int]) -> None:
    """API_MAX_CONNECTIONS = 8 per worker: a worker closes at once any connection beyond
    twice as many, instead of holding them all (the header timeout is out of the way here)."""
    import select

    server = capped_server
    n_workers = len(_started_workers(server))
    kept = 2 * 8 * n_workers
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(kept + 40)]
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + 60
    try:
        while len(closed) < 40 and time.monotonic() < deadline:
            ready, _, _ = select.select([s for s in idle if s not in closed], [], [], 1.0)
            for s in ready:
                try:
                    if s.recv(4096) == b"":
                        closed.add(s)
                except ConnectionResetError:
                    closed.add(s)
        assert len(closed) >= 40, f"{len(closed)} of {len(idle)} connections closed"
    finally:
        for s in idle:
            s.close()
    assert server.run("gridstat", user="alice").returncode == 0


def test_a_dead_worker_is_replaced(server: Server, clusters: dict[str, int]) -> None:
    workers = _started_workers(server)
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        now = _workers(server)
        if victim not in now and len(now) == len(workers):
            break
        assert server.proc.poll() is None, "the server stopped when one worker died"
        assert time.monotonic() < deadline, f"worker not replaced: {now}"
        time.sleep(0.1)
    for _ in range(2 * len(workers)):  # every worker answers
        r = server.run("gridstat", user="alice")
        assert r.returncode == 0, r.stderr
    assert server.proc.poll() is None


def test_shipped_units_run_the_api_as_the_tests_do() -> None:
    """The server above is started the way systemd/cigri-api.service starts it: same user,
    same root-only preparation; and both units restart whatever the exit (#11 item 6)."""
    root = Path(__file__).resolve().parents[2] / "systemd"
    api = dict(line.split("=", 1) for line in (root / "cigri-api.service").read_text().splitlines()
               if "=" in line and not line.startswith("#"))
    assert api["User"] == API_USER and api["Group"] == API_USER
    assert api["ExecStartPre"].startswith("+") and api["ExecStartPre"].endswith(f"cigri-api --prepare {API_USER}")
    assert api["ProtectHome"] == "yes" and api["NoNewPrivileges"] == "yes"
    for unit in ("cigri-api.service", "cigri.service"):
        assert "Restart=always" in (root / unit).read_text().splitlines(), unit
