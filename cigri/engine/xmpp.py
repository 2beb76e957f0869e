"""Jabber (XMPP) delivery for judas, with slixmpp.

Judas is synchronous; slixmpp runs on asyncio. A session lives for one notification pass:
its event loop runs in a private thread, and each call waits for its result with a
timeout, so a dead or slow server can only cost that pass a bounded time. As CiGri3's
judas did, the session announces itself with presence "dnd" ("I am the new grid!").

Authentication uses whatever the server offers, over TLS (STARTTLS, certificate checked)
when the server proposes it. Without TLS, SCRAM (which never sends the password) is
allowed only to a loopback server; PLAIN never is."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import threading
from collections.abc import Coroutine
from typing import Any

# characters XML 1.0 cannot carry: one of them in a task's stderr would break the stream
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class XmppError(Exception):
    """A session or a message failed; `transient` when a later pass may succeed."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def xml_safe(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class XmppSession:
    """One logged-in XMPP session (raises XmppError when it cannot be opened)."""

    def __init__(self, jid: str, password: str, server: str, port: int, timeout: float = 30.0) -> None:
        import slixmpp  # imported here: only sites that configure XMPP pay for it

        self.jid, self.server, self.port, self.timeout = jid, server, port, timeout
        self._loop = LoopThread("cigri-xmpp")
        self._client: Any = None
        try:
            self._call(self._connect(slixmpp, jid, password))
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self._loop.run(coro, self.timeout)
        except TimeoutError:
            raise XmppError(f"no answer from {self.server}:{self.port} within {self.timeout:g} s", True) from None

    async def _connect(self, slixmpp: Any, jid: str, password: str) -> None:
        client = slixmpp.ClientXMPP(jid, password)
        self._client = client
        if _is_loopback(self.server):
            client["feature_mechanisms"].unencrypted_scram = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(error: XmppError | None) -> None:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

        def on_session(_event: Any) -> None:
            client.send_presence(pshow="dnd", pstatus="I am the new grid!")
            settle(None)

        client.add_event_handler("session_start", on_session)
        client.add_event_handler("failed_all_auth", lambda _e: settle(XmppError(
            f"the XMPP server {self.server} refused the login of {jid} (NOTIFICATIONS_XMPP_IDENTITY/_PASSWORD)",
            False)))
        failures: list[str] = []  # slixmpp tries direct TLS, then STARTTLS/plain: one event per try
        client.add_event_handler("connection_failed", lambda e: failures.append(str(e)))
        client.add_event_handler("disconnected", lambda _e: settle(XmppError(
            f"the XMPP server {self.server}:{self.port} closed the connection during login", True)))
        try:
            await asyncio.wait_for(client.connect(host=self.server, port=self.port), self.timeout)
            if not client.is_connected():
                settle(XmppError(f"cannot connect to the XMPP server {self.server}:{self.port}: "
                                 f"{failures[-1] if failures else 'no answer'}", True))
            await asyncio.wait_for(done, self.timeout)
        except TimeoutError:
            raise XmppError(f"no XMPP session with {self.server}:{self.port} within {self.timeout:g} s",
                            True) from None
        except XmppError:
            client.cancel_connection_attempt()  # slixmpp would otherwise keep reconnecting
            client.abort()
            raise

    def send(self, to: str, body: str) -> None:
        """Hand a chat message to the server."""
        async def _send() -> None:
            if self._client is None or not self._client.is_connected():
                raise XmppError(f"the XMPP connection to {self.server}:{self.port} is gone", True)
            self._client.send_message(mto=to, mbody=xml_safe(body), mtype="chat")

        self._call(_send())

    def close(self) -> None:
        """Flush what was sent, leave, and stop the thread."""
        async def _bye() -> None:
            client, self._client = self._client, None
            if client is not None:
                client.cancel_connection_attempt()
                if client.is_connected():
                    await client.disconnect(wait=min(self.timeout, 5.0))

        try:
            if self._loop.alive():
                self._call(_bye())
        except XmppError:
            pass
        finally:
            self._loop.stop(self.timeout)


class LoopThread:
    """An asyncio event loop in a daemon thread, for synchronous callers."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """The coroutine's result; TimeoutError (and the coroutine cancelled) after `timeout` s."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:  # concurrent.futures' timeout is the builtin since 3.11
            fut.cancel()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what still runs on the loop, wait for it, then stop and close the loop."""
        async def _cancel_rest() -> None:
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            try:
                self.run(_cancel_rest(), timeout)
            except TimeoutError:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()
