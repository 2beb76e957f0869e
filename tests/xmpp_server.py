"""A real XMPP server for the notification tests: Debian's prosody, started by the test
session on a free loopback port with its own configuration and data in a temporary
directory (so parallel sessions never share it), and a slixmpp client that receives.

tools/test installs prosody (tools/apt-ensure) and exports CIGRI_XMPP=1: the part is then
required, as under CI=true (tests/parts.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cigri.engine.xmpp import LoopThread
from tests.parts import Part

DOMAIN = "localhost"
PASSWORD = "xmpp-test-pw"


def _probe() -> str | None:
    if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
        return "prosody is not installed (apt-get install prosody; tools/test installs it)"
    return None


PROSODY = Part("XMPP server (prosody)", "CIGRI_XMPP", _probe, hint="tools/test installs prosody", patience=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class XmppServer:
    port: int
    directory: Path
    config: Path
    process: subprocess.Popen[bytes]

    def add_user(self, name: str, password: str = PASSWORD) -> str:
        subprocess.run(["prosodyctl", "--config", str(self.config), "register", name, DOMAIN, password],
                       check=True, capture_output=True, timeout=60)
        return f"{name}@{DOMAIN}"

    def log(self) -> str:
        try:
            return (self.directory / "prosody.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start_again(self) -> None:
        """After stop(): the same server (users, port) again."""
        self.process = _spawn(self.config, self.directory)
        _wait_listening(self)


def _spawn(config: Path, directory: Path) -> subprocess.Popen[bytes]:
    out = open(directory / "prosody.stdout", "ab")  # noqa: SIM115 - the server's lifetime
    return subprocess.Popen(["prosody", "-F", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def _wait_listening(server: XmppServer, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if server.process.poll() is not None:
            raise RuntimeError(f"prosody exited with {server.process.returncode}: {server.log()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"prosody does not listen on 127.0.0.1:{server.port}: {server.log()}")


def start_server(directory: Path) -> XmppServer:
    port = _free_port()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    config = directory / "prosody.cfg.lua"
    config.write_text(f"""-- test server: loopback only, no TLS, no server-to-server, no HTTP
run_as_root = true
daemonize = false
pidfile = "{directory}/prosody.pid"
data_path = "{directory}/data"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{directory}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_direct_tls_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "offline" }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = false
authentication = "internal_hashed"
storage = "internal"
VirtualHost "{DOMAIN}"
""")
    server = XmppServer(port, directory, config, _spawn(config, directory))
    try:
        _wait_listening(server)
    except BaseException:
        server.stop()
        raise
    return server


class Receiver:
    """A user online on the test server, collecting the chat messages it gets."""

    def __init__(self, jid: str, port: int, password: str = PASSWORD) -> None:
        import slixmpp

        self.jid, self.port, self.password = jid, port, password
        self.messages: list[tuple[str, str]] = []  # (from bare JID, body)
        self.loop = LoopThread("xmpp-receiver")
        try:
            self.loop.run(self._start(slixmpp), 60)
        except BaseException:
            self.loop.stop()
            raise

    async def _start(self, slixmpp: Any) -> None:
        self.client = slixmpp.ClientXMPP(self.jid, self.password)
        self.client["feature_mechanisms"].unencrypted_scram = True  # loopback test server, no TLS
        started = asyncio.get_running_loop().create_future()

        def on_session(_event: Any) -> None:
            self.client.send_presence()
            if not started.done():
                started.set_result(True)

        def on_message(msg: Any) -> None:
            if msg["type"] in ("chat", "normal"):
                self.messages.append((str(msg["from"].bare), str(msg["body"])))

        def on_fail(_event: Any) -> None:
            if not started.done():
                started.set_exception(RuntimeError(f"{self.jid} cannot log in"))

        self.client.add_event_handler("session_start", on_session)
        self.client.add_event_handler("message", on_message)
        self.client.add_event_handler("failed_all_auth", on_fail)
        self.client.connect(host="127.0.0.1", port=self.port)
        await asyncio.wait_for(started, 30)

    def wait_for(self, n: int, deadline: float = 60) -> list[tuple[str, str]]:
        end = time.monotonic() + deadline
        while len(self.messages) < n and time.monotonic() < end:
            time.sleep(0.05)
        return list(self.messages)

    def stop(self) -> None:
        async def _bye() -> None:
            await self.client.disconnect(wait=1.0)

        try:
            self.loop.run(_bye(), 30)
        finally:
            self.loop.stop()


@pytest.fixture(scope="session")
def xmpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppServer]:
    PROSODY.require()
    server = start_server(tmp_path_factory.mktemp("prosody"))
    try:
        yield server
    finally:
        server.stop()


_users = 0


def new_user(server: XmppServer, prefix: str) -> str:
    """A fresh account (each test its own users: the session's server is shared)."""
    global _users
    _users += 1
    return server.add_user(f"{prefix}{os.getpid()}x{_users}")
