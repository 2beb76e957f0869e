"""Fixtures of the API tests: the application with an injected kernel identity (the
same scope key the real Unix-socket server fills), clusters like CiGri3's spec suite,
and a real `cigri-api` process for the end-to-end tests."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from cigri.api.app import create_app
from cigri.api.auth import PEER_SCOPE_KEY
from cigri.config import Conf
from tests.conftest import add_cluster, pg_conf_values

VENV_BIN = Path(sys.executable).parent
DEAD_URL = "http://127.0.0.1:9/oarapi/"
JDL = {"name": "test_api", "nb_jobs": 10, "clusters": {"dahu": {"exec_file": "e"}}}


class PeerIdentity:
    """ASGI wrapper playing the role of cigri.api.server for in-process tests."""

    def __init__(self, app: Any, user: str | None) -> None:
        self.app, self.user = app, user

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.user is not None:
            scope = dict(scope)
            scope[PEER_SCOPE_KEY] = {"pid": 1, "uid": 4242, "gid": 4242, "user": self.user}
        await self.app(scope, receive, send)


@pytest.fixture(scope="session", autouse=True)
def unix_users() -> None:
    """alice and bob are real accounts (tokens are issued only for existing accounts)."""
    for u in ("alice", "bob"):
        ensure_user(u)


@pytest.fixture
def api_conf(pg_conf: Conf, tmp_path: Path) -> Conf:
    return pg_conf.with_values(API_ADMINS="root", API_JWT_SECRET_FILE=str(tmp_path / "jwt.secret"),
                               API_TRUSTED_PROXIES="10.1.2.3", STRESS_FACTOR="0.8")


@pytest.fixture
def clusters(pg_engine: Engine) -> dict[str, int]:
    # A port where nothing listens: API tests (and the fuzz run, which deletes "files" on
    # clusters as root) must never reach the real OAR testbed.
    return {"dahu": add_cluster(pg_engine, "dahu", api_url=DEAD_URL),
            "bigfoot": add_cluster(pg_engine, "bigfoot", api_url=DEAD_URL),
            "dahu-oar3": add_cluster(pg_engine, "dahu-oar3", batch="oar3", api_auth_type="jwt", api_url=DEAD_URL)}


@pytest.fixture
def app(api_conf: Conf, pg_engine: Engine, clusters: dict[str, int]) -> Any:
    return create_app(api_conf)


@pytest.fixture
def client_for(app: Any) -> Any:
    """client_for("alice") -> a TestClient whose requests come from Unix user alice."""
    made: list[TestClient] = []

    def make(user: str | None) -> TestClient:
        c = TestClient(PeerIdentity(app, user), raise_server_exceptions=False)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def alice(client_for: Any) -> TestClient:
    return client_for("alice")


@pytest.fixture
def bob(client_for: Any) -> TestClient:
    return client_for("bob")


@pytest.fixture
def root(client_for: Any) -> TestClient:
    return client_for("root")


@pytest.fixture
def anon(client_for: Any) -> TestClient:
    return client_for(None)


@pytest.fixture
def campaign(alice: TestClient) -> int:
    r = alice.post("/campaigns", json=JDL)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


# --------------------------------------------------------------------------- real server
def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", name], check=True)
        return pwd.getpwnam(name)


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], sock: str, port: int, conf_file: str, client_conf: str,
                 tcp_client_conf: str, directory: str, log: Path) -> None:
        self.proc, self.sock, self.port = proc, sock, port
        self.conf_file, self.client_conf, self.tcp_client_conf = conf_file, client_conf, tcp_client_conf
        self.dir = directory
        self.log = log

    def env(self, tcp: bool = False) -> dict[str, str]:
        e = dict(os.environ)
        e["CIGRICONFFILE"] = self.tcp_client_conf if tcp else self.client_conf
        e.pop("COLUMNS", None)
        e["TZ"] = "UTC"
        return e

    def run(self, cmd: str, *args: str, user: str | None = None, tcp: bool = False, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(VENV_BIN / cmd), *args]
        env = self.env(tcp)
        if user is not None:
            pw = pwd.getpwnam(user)
            env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
            argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
        return subprocess.run(argv, env=env, capture_output=True, text=True, input=input, timeout=timeout,
                              cwd=self.dir)


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


API_USER = "cigri"


def ensure_api_user() -> pwd.struct_passwd:
    """The unprivileged system user the shipped unit runs the API as (systemd/cigri-api.service)."""
    try:
        return pwd.getpwnam(API_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--home-dir", "/var/lib/cigri", "--shell",
                        "/usr/sbin/nologin", API_USER], check=True)
        return pwd.getpwnam(API_USER)


@pytest.fixture(scope="module")
def server(pg_dbname: str) -> Iterator[Server]:
    """A real `cigri-api` process on a Unix socket and on 127.0.0.1 (TCP), started as the
    shipped unit starts it: `cigri-api --prepare cigri` as root, then the server as user cigri."""
    yield from start_server(pg_dbname, {"API_HEADER_TIMEOUT": "2", "API_MAX_CONNECTIONS": "16"})


def start_server(pg_dbname: str, extra: dict[str, str]) -> Iterator[Server]:
    """Start a real server with `extra` cigri.conf values; stop it when the generator is closed."""
    for u in ("alice", "bob"):
        ensure_user(u)
    api_pw = ensure_api_user()
    d = tempfile.mkdtemp(prefix="cigri-api-test-")
    os.chmod(d, 0o755)
    os.chown(d, api_pw.pw_uid, api_pw.pw_gid)
    sock = os.path.join(d, "api.sock")
    port = _free_port()
    values = pg_conf_values(pg_dbname) | {
        "LOG_FILE": "STDERR", "API_LISTEN_SOCKET": sock, "API_LISTEN_HOST": "127.0.0.1",
        "API_LISTEN_PORT": str(port), "API_JWT_SECRET_FILE": os.path.join(d, "jwt.secret"),
        "API_ADMINS": "root", "API_TRUSTED_PROXIES": "10.1.2.3"} | extra
    conf_file = os.path.join(d, "cigri.conf")
    Path(conf_file).write_text("".join(f'{k} = "{v}"\n' for k, v in values.items()))
    os.chown(conf_file, 0, api_pw.pw_gid)
    os.chmod(conf_file, 0o640)
    client_conf = os.path.join(d, "api-clients.conf")
    Path(client_conf).write_text(f'API_SOCKET = "{sock}"\nAPI_TIMEOUT = "120"\n'
                                   'API_TOKEN_FILE = "~/.cigri-test-token"\n')
    tcp_conf = os.path.join(d, "api-clients-tcp.conf")
    Path(tcp_conf).write_text(f'API_URL = "http://127.0.0.1:{port}"\nAPI_TIMEOUT = "120"\n'
                              'API_TOKEN_FILE = "~/.cigri-test-token"\n')
    for f in (client_conf, tcp_conf):
        os.chmod(f, 0o644)
    log = Path(d) / "server.log"
    env = dict(os.environ, CIGRICONFFILE=conf_file)
    subprocess.run([str(VENV_BIN / "cigri-api"), "--prepare", API_USER], env=env, check=True)
    with open(log, "wb") as lf:
        proc = subprocess.Popen(["setpriv", f"--reuid={api_pw.pw_uid}", f"--regid={api_pw.pw_gid}", "--init-groups",
                                 "--", str(VENV_BIN / "cigri-api")], env=env, stdout=lf, stderr=subprocess.STDOUT,
                                cwd="/")
    srv = Server(proc, sock, port, conf_file, client_conf, tcp_conf, d, log)
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"cigri-api did not start: {log.read_text()}")
        time.sleep(0.1)
    try:
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)
