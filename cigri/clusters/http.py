"""REST transport shared by the OAR adapters.

One `RestSession` per cluster: a keep-alive `requests.Session`, the cluster's auth
(none / password = real HTTP basic auth, a no-op in CiGri3 / cert / jwt), the per-user
identity header, collection pagination (OAR 2.5 `next` links, OAR 3 offset/total),
and the mapping of EVERY HTTP or network failure to a typed `ClusterAPIError` whose
`code` is the event code CiGri records (or the operation's default code for anything
unexpected). Header values (identities, tokens, passwords) are never logged."""

from __future__ import annotations

import errno
import json
import logging
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3.exceptions

from cigri.clusters.base import (
    ClusterAPIBadRequest,
    ClusterAPIConnectionError,
    ClusterAPIError,
    ClusterAPIForbidden,
    ClusterAPINotFound,
    ClusterAPIPermissionDenied,
    ClusterAPIServerError,
    ClusterAPITimeout,
    ClusterAPITimeoutPOST,
    ClusterAPITooLarge,
    ClusterConfigError,
    ClusterInfo,
    TokenNotFound,
)
from cigri.sanitize import clean_json, clean_text, json_needs_cleaning

log = logging.getLogger("cigri.clusters")

ADMIN = "oar"  # grid login used for admin-level calls (bulk status), as CiGri3
BODY_IN_MESSAGE = 600  # characters of a response body quoted in error messages
FAST_FAILURE = 0.5  # seconds: a POST failing faster than this never reached oarsub


def _conf_get(conf: Any, key: str, default: Any) -> Any:
    if conf is None:
        return default
    try:
        value = conf.get(key)
    except Exception:  # noqa: BLE001 - a missing key in a foreign conf object means "default"
        return default
    return default if value is None or value == "" else value


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


class RestSession:
    """HTTP client of one cluster API. Paths are relative to `api_url` (URI merge)."""

    def __init__(self, cluster: ClusterInfo, conf: Any = None, mapping: Mapping[str, str] | None = None,
                 jwt_allowed: bool = False, retry_web_server_errors: bool = True) -> None:
        self.cluster = cluster
        self.retry_web_server_errors = retry_web_server_errors
        self.conf = conf
        self.mapping: dict[str, str] = dict(mapping or {})
        self.jwt_allowed = jwt_allowed
        base = cluster.api_url or ""
        self.base = base if base.endswith("/") else base + "/"
        self.timeout = float(_conf_get(conf, "REST_QUERIES_TIMEOUT", 30))
        self._session: requests.Session | None = None
        self.calls = 0  # number of HTTP requests sent (benchmarks, tests)

    # ------------------------------------------------------------------ setup

    def _build_session(self, default_code: str) -> requests.Session:
        """The requests.Session with the cluster's auth; config problems become typed errors."""
        c = self.cluster
        s = requests.Session()
        s.trust_env = False  # no proxy; loopback/intranet APIs
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=8, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        verify: bool | str = _truthy(_conf_get(self.conf, "REST_CLIENT_VERIFY_SSL", True))
        ca = _conf_get(self.conf, "REST_CLIENT_CA_FILE", "")
        if verify and ca:
            verify = str(ca)
        s.verify = verify
        auth = (c.api_auth_type or "none").lower()
        if auth == "none":
            pass
        elif auth == "password":
            if not c.api_username:
                raise ClusterConfigError(
                    f"Authentification type 'password' for cluster {c.name} requires api_username "
                    f"(and api_password)", code=default_code, event_open=True)
            s.auth = requests.auth.HTTPBasicAuth(c.api_username, c.api_password or "")
        elif auth == "cert":
            cert = _conf_get(self.conf, "REST_CLIENT_CERTIFICATE_FILE", "")
            key = _conf_get(self.conf, "REST_CLIENT_KEY_FILE", "")
            if not cert or not key:
                raise ClusterConfigError(
                    f"Authentification type 'cert' for cluster {c.name} requires at least a certificate "
                    f"and a key in the configuration file.", code=default_code, event_open=True)
            s.cert = (str(cert), str(key))
        elif auth == "jwt":
            if not self.jwt_allowed:
                raise ClusterConfigError(
                    f"Authentification type 'jwt' for cluster {c.name} is only available for oar3 batch "
                    f"system", code=default_code, event_open=True)
        else:
            raise ClusterConfigError(f"Authentification type '{c.api_auth_type}' not supported "
                                     f"(cluster {c.name})", code=default_code, event_open=True)
        return s

    def session(self, default_code: str) -> requests.Session:
        if self._session is None:
            self._session = self._build_session(default_code)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        """The URL of `path` under the cluster's API. A relative path must stay under it:
        no `.`/`..` segment (even percent-encoded), which the cluster's web server would
        resolve to another of its paths, reached with CiGri's credentials."""
        if path.startswith(("http://", "https://")):
            return path
        url = urljoin(self.base, path.lstrip("/"))
        if not url.startswith(self.base) or has_dot_segment(urlsplit(url).path):
            raise ClusterAPIError(f"Refused: {path!r} leads outside the API of cluster {self.cluster.name}")
        return url

    # ------------------------------------------------------------------ identity

    def identity_headers(self, user: str | None, default_code: str, required: bool = True) -> dict[str, str]:
        """{api_auth_header: map_user(user)}; jwt clusters need a mapped token (TokenNotFound otherwise).
        With `required=False` a missing token just means an anonymous request."""
        if user is None:
            return {}
        c = self.cluster
        header = c.api_auth_header or ("Authorization" if c.api_auth_type == "jwt" else "X_REMOTE_IDENT")
        if c.api_auth_type == "jwt":
            token = self.mapping.get(user)
            if not token:
                if not required:
                    return {}
                raise TokenNotFound(f"Missing token for user {user} on cluster {c.id} ({c.name}): "
                                    f"use the 'gridtoken' command", code=default_code, event_open=True)
            token = token.strip()
            if header.lower() == "authorization" and not token.lower().startswith("bearer "):
                token = "Bearer " + token
            return {header: token}
        return {header: self.mapping.get(user, user)}

    # ------------------------------------------------------------------ requests

    def request(self, method: str, path: str, *, default_code: str, user: str | None = None,
                params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                body: Any = None, raw: bool = False, identity_required: bool = True,
                timeout: float | None = None) -> Any:
        """One HTTP call: parsed JSON (or text when `raw`), typed errors otherwise."""
        method = method.upper()
        url = self.url(path)
        s = self.session(default_code)  # configuration problems first
        headers = {"Accept": "application/json"}  # OAR 2.5 answers 406 without it (gotcha 5)
        if method in ("POST", "DELETE", "PUT"):
            headers["Content-Type"] = "application/json"
        headers.update(self.identity_headers(user, default_code, required=identity_required))
        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        idempotent = method in ("GET", "DELETE", "HEAD")
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            try:
                log.debug("%s %s", method, url)
                resp = s.request(method, url, params=params, data=data, headers=headers,
                                 timeout=timeout if timeout is not None else self.timeout)
            except requests.exceptions.RequestException as exc:
                err = self._network_error(exc, method, url, default_code)
                # a keep-alive connection closed by the server under our feet: retry idempotent calls once
                if idempotent and attempt == 1 and err.code == "CONNECTION_RESET":
                    continue
                raise err from exc
            if (self.retry_web_server_errors and resp.status_code in (500, 502, 503) and attempt == 1
                    and not _is_json(resp) and (idempotent or resp.elapsed.total_seconds() < FAST_FAILURE)):
                # Apache's own error page, not the API's: with mod_fcgid this is a FastCGI process
                # that exited after its previous request (OAR 2.5 exits on errors) and was handed
                # ours; the script never ran. Retry once (a POST only when it failed that fast).
                log.info("%s %s: transient %s from the web server, retrying once", method, url, resp.status_code)
                continue
            if resp.status_code >= 500:
                # a server may close the connection after a 5xx without saying so (uvicorn):
                # never send the next request on it
                resp.close()
                self.close()
            return self._response(resp, method, url, default_code, raw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def _response(self, resp: requests.Response, method: str, url: str, default_code: str, raw: bool) -> Any:
        status = resp.status_code
        if 200 <= status < 300:
            if raw:
                return clean_text(resp.content.decode("utf-8", errors="replace"), limit=None)
            if not resp.content.strip():
                return {}
            try:
                data = json.loads(resp.content)  # bytes: UTF-8 whatever charset OAR 2.5 claims (latin-1)
            except ValueError as exc:
                raise ClusterAPIError(f"{method} {url}: the cluster API answered {status} with a body that "
                                      f"is not JSON: {_snippet(resp)}", code=default_code, event_open=True,
                                      status=status, body=_snippet(resp), ambiguous=True) from exc
            return clean_json(data) if json_needs_cleaning(resp.content) else data
        body = _snippet(resp)
        msg = f"{status} error in {method} for {url}: {body}"
        if status == 400:
            raise ClusterAPIBadRequest(msg, status=status, body=body)
        if status == 401:
            raise ClusterAPIPermissionDenied(msg, status=status, body=body)
        if status == 403:
            raise ClusterAPIForbidden(msg, status=status, body=body)
        if status == 404 and method != "POST":
            raise ClusterAPINotFound(msg, status=status, body=body)
        if status == 413 and method == "POST":
            raise ClusterAPITooLarge(msg, status=status, body=body)
        if status >= 500:
            # a gateway's 502/504 says nothing of what the API behind it did with the request
            raise ClusterAPIServerError(msg, status=status, body=body, ambiguous=status in (502, 504))
        raise ClusterAPIError(msg, code=default_code, event_open=True, status=status, body=body)

    def _network_error(self, exc: Exception, method: str, url: str, default_code: str) -> ClusterAPIError:
        """Classify a requests exception into CiGri3's event codes (cigri.event_codes)."""
        if isinstance(exc, requests.exceptions.Timeout):
            text = f"{method} {url}: REST query timeouted! ({self.timeout:g} s)"
            if method == "POST" and not isinstance(exc, requests.exceptions.ConnectTimeout):
                return ClusterAPITimeoutPOST(text)
            return ClusterAPITimeout(text)
        if isinstance(exc, requests.exceptions.SSLError) or _find(exc, (ssl.SSLError,)):
            return ClusterAPIConnectionError(f"{method} {url}: SSL error: {_short(exc)}", code="SSL_ERROR")
        if isinstance(exc, requests.exceptions.ConnectionError):
            os_err = _find(exc, (OSError,))
            num = getattr(os_err, "errno", None)
            if _find(exc, (socket.gaierror, urllib3.exceptions.NameResolutionError)):
                code = "SOCKET_ERROR"
            elif num == errno.ECONNREFUSED or "refused" in str(exc).lower():
                code = "CONNECTION_REFUSED"
            elif num in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                code = "HOST_UNREACHABLE"
            elif num in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED) or _find(
                    exc, (ConnectionResetError, BrokenPipeError, urllib3.exceptions.ProtocolError)):
                code = "CONNECTION_RESET"
            elif num == errno.ETIMEDOUT:
                return ClusterAPITimeout(f"{method} {url}: REST query timeouted! (ETIMEDOUT)")
            else:
                code = "SOCKET_ERROR"
            # once the request was sent, a reset may come after the cluster carried it out
            return ClusterAPIConnectionError(f"{method} {url}: {code.lower().replace('_', ' ')}: {_short(exc)}",
                                             code=code, ambiguous=code == "CONNECTION_RESET")
        # an answer cut short (ChunkedEncodingError) or undecodable: the request was carried out or not
        return ClusterAPIError(f"{method} {url}: {type(exc).__name__}: {_short(exc)}", code=default_code,
                               event_open=True, ambiguous=True)

    # ------------------------------------------------------------------ collections

    def get_collection(self, path: str, *, default_code: str, user: str | None = None,
                       params: Iterable[tuple[str, Any]] = (), limit: int | None = None,
                       style: str = "oar2_5", identity_required: bool = True) -> list[dict[str, Any]]:
        """All `items` of a paginated collection (OAR 2.5 `next` links or OAR 3 offset/total)."""
        limit = int(limit or self.cluster.api_limit or 100)
        base_params = list(params)
        items: list[dict[str, Any]] = []
        data = self.get(path, default_code=default_code, user=user, identity_required=identity_required,
                        params=base_params + [("limit", limit)])
        seen: set[str] = set()
        while True:
            if not isinstance(data, dict) or not isinstance(data.get("items", []), list):
                raise ClusterAPIError(f"GET {self.url(path)}: unexpected collection: {str(data)[:BODY_IN_MESSAGE]}",
                                      code=default_code, event_open=True)
            page = data.get("items") or []
            items.extend(page)
            if style == "oar2_5":
                nxt = next((lk.get("href") for lk in data.get("links") or []
                            if isinstance(lk, dict) and lk.get("rel") == "next"), None)
                if not nxt or nxt in seen or not page:
                    return items
                seen.add(nxt)
                data = self.get(urljoin(self.base, nxt), default_code=default_code, user=user,
                                identity_required=identity_required)
            else:
                offset = int(data.get("offset") or 0)
                total = int(data.get("total") or 0)
                if not page or offset + len(page) >= total:
                    return items
                try:
                    data = self.get(path, default_code=default_code, user=user,
                                    identity_required=identity_required,
                                    params=base_params + [("limit", limit), ("offset", offset + len(page))])
                except ClusterAPINotFound:  # OAR 3: offset past the end -> 404 "Empty request"
                    return items


def has_dot_segment(path: str) -> bool:
    """Whether `path` has a `.` or `..` segment, once percent-decoded (repeatedly)."""
    for _ in range(4):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return any(seg in (".", "..") for seg in path.replace("\\", "/").split("/"))


def media_path(path: str) -> str:
    """A file path to read or delete through a cluster's media API: absolute, slashes
    collapsed, and ValueError for a `.`/`..` segment or a NUL, which would reach another
    file than the one named (or the API itself)."""
    if "\0" in path or has_dot_segment(path):
        raise ValueError(f"'.' and '..' are not allowed in a file path: {path!r}")
    return "/" + "/".join(seg for seg in path.split("/") if seg)


def _is_json(resp: requests.Response) -> bool:
    return "json" in (resp.headers.get("Content-Type") or "").lower()


def _snippet(resp: requests.Response) -> str:
    text = resp.content[:BODY_IN_MESSAGE * 2].decode("utf-8", errors="replace")
    try:
        data = json.loads(resp.content)
        if isinstance(data, dict):
            parts = [str(data[k]) for k in ("title", "message", "detail") if data.get(k)]
            if parts:
                text = " - ".join(parts)
    except ValueError:
        pass
    return clean_text(" ".join(text.split()), BODY_IN_MESSAGE)


def _short(exc: BaseException) -> str:
    return clean_text(" ".join(str(exc).split()), 300)


def _find(exc: BaseException, types: tuple[type, ...]) -> Any:
    """First exception of `types` in the cause/context/args chain of a requests error."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types) and e is not exc:
            return e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())])
    return None
