"""The small HTTP client shared by the grid* commands.

On the API host the commands talk to the Unix socket API_SOCKET: the server learns who
we are from the kernel, so nothing is sent to prove it. Remote hosts use TCP (API_URL,
or API_HOST/API_PORT/API_BASE as in CiGri3) with a bearer token from API_TOKEN_FILE."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from cigri import __version__
from cigri.config import Conf
from cigri.errors import CigriError, ConfigError

DEFAULT_CLIENT_CONF = "/etc/cigri/api-clients.conf"
UNIX_BASE = "http+unix://cigri-api"


# --------------------------------------------------------------------------- transports
class Unreachable(Exception):
    """The API server cannot be reached (no socket, connection refused or reset)."""


class TimedOut(Exception):
    """The API server did not answer in time."""


class RequestFailed(Exception):
    """Any other failure of a request."""


class _Response:
    """What the commands read of an answer (the attributes of a requests.Response they use)."""

    def __init__(self, status: int, headers: Any, content: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class UnixSession:
    """HTTP over the API's Unix socket with the standard library alone: the grid* commands
    on the CiGri host answer without importing requests (a third of their start-up)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.headers: dict[str, str] = {}

    def request(self, method: str, url: str, params: Any = None, json: Any = None, data: Any = None,
                headers: dict[str, str] | None = None, timeout: Any = None, **_: Any) -> _Response:
        import http.client
        from urllib.parse import urlencode, urlsplit

        u = urlsplit(url)
        target = u.path or "/"
        query = [u.query] if u.query else []
        if params:
            query.append(urlencode(params, doseq=True))
        if query:
            target += "?" + "&".join(query)
        hdrs = {**self.headers, **(headers or {})}
        body = data
        if json is not None:
            import json as _json

            body = _json.dumps(json).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        connect_t, read_t = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        path = self.path

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(connect_t)
                s.connect(path)
                s.settimeout(read_t)
                self.sock = s

        conn = Conn("cigri-api")
        try:
            conn.request(method, target, body=body, headers=hdrs)
            r = conn.getresponse()
            return _Response(r.status, r.headers, r.read())
        except TimeoutError as e:
            raise TimedOut(str(e)) from None
        except (FileNotFoundError, ConnectionError) as e:
            raise Unreachable(_root_cause(e)) from None
        except (OSError, http.client.HTTPException) as e:
            raise RequestFailed(str(e) or type(e).__name__) from None
        finally:
            conn.close()


class RequestsSession:
    """HTTP(S) to a remote API through requests (imported only then)."""

    def __init__(self) -> None:
        import requests

        self.s = requests.Session()
        self.headers = self.s.headers
        self.verify = True

    def request(self, method: str, url: str, **kw: Any) -> Any:
        import requests

        self.s.verify = self.verify
        try:
            return self.s.request(method, url, **kw)
        except requests.ConnectionError as e:
            raise Unreachable(_root_cause(e)) from None
        except requests.Timeout as e:
            raise TimedOut(str(e)) from None
        except requests.RequestException as e:
            raise RequestFailed(str(e)) from None


# --------------------------------------------------------------------------- errors
class CliError(Exception):
    """A message for the user and the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.code = message, code


_UNSET: Any = object()


class ApiResponse:
    def __init__(self, r: Any) -> None:
        self.status = r.status_code
        self.headers = r.headers
        self._r = r
        self._body: Any = _UNSET

    @property
    def text(self) -> str:
        return self._r.text

    @property
    def content(self) -> bytes:
        return self._r.content

    @property
    def body(self) -> Any:
        """The parsed JSON answer (parsed on first use: a raw dump never parses it)."""
        if self._body is _UNSET:
            try:
                self._body = self._r.json()
            except ValueError:
                self._body = None
        return self._body

    @body.setter
    def body(self, value: Any) -> None:
        self._body = value

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        from cigri.cli.formats import safe_text

        if isinstance(self.body, dict) and "message" in self.body:
            return safe_text(self.body["message"])
        return safe_text(self.text.strip()) or f"HTTP {self.status}"


# --------------------------------------------------------------------------- client
def load_client_conf() -> Conf:
    path = os.environ.get("CIGRICONFFILE")
    if not path and os.path.isfile(DEFAULT_CLIENT_CONF):
        path = DEFAULT_CLIENT_CONF
    try:
        if path:
            return Conf(path)
        return _local_mode_conf() or Conf()
    except ConfigError as e:
        raise CliError(str(e)) from None


def _local_mode_conf() -> Conf | None:
    """No client configuration and no system API socket, but `cigri local run` is serving
    in this user's data directory: talk to it (the README's first command)."""
    from cigri.config import embedded_conf, user_data_dir

    if os.path.exists(str(Conf().get("API_SOCKET"))):
        return None
    emb = embedded_conf()
    written = user_data_dir() / "cigri-local.conf"
    if os.path.exists(str(emb.get("API_SOCKET"))):
        return Conf(written) if written.is_file() else emb
    # The run is over (its API is gone): the API is started on demand to read the results.
    return Conf(written) if written.is_file() and os.path.exists(str(emb.get("DATABASE_PATH"))) else None


def _local_api_conf(c: Conf) -> Path | None:
    """The configuration of `cigri local run`'s daemons, when `c` points at its API socket
    (the results stay readable after the run: the API is then started on demand)."""
    from cigri.config import user_data_dir

    written = user_data_dir() / "cigri-local.conf"
    if c.exists("API_URL") and c.get("API_URL"):
        return None
    try:
        if written.is_file() and str(Conf(written).get("API_LISTEN_SOCKET")) == str(c.get("API_SOCKET")):
            return written
    except ConfigError:
        return None
    return None


#: seconds an API started on demand (local mode, after the run) stays without requests
LOCAL_API_IDLE = 600.0


def start_local_api(conf_path: Path, sock: str, wait: float = 20.0) -> bool:
    """Start local mode's API server in the background (one at a time), and wait for it."""
    import fcntl
    import subprocess
    import time

    def answers() -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    with open(conf_path.parent / "api-start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if answers():
            return True
        try:
            log_path = str(Conf(conf_path).get("LOG_FILE") or os.devnull)
        except ConfigError:
            log_path = os.devnull
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-P", "-m", "cigri.modules.api", "--workers", "1",
                                     "--log-level", "warning", "--idle-exit", str(LOCAL_API_IDLE)],
                                    env=dict(os.environ, CIGRICONFFILE=str(conf_path)), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True, cwd="/")
        (conf_path.parent / "api-on-demand.pid").write_text(str(proc.pid))  # `cigri local stop` stops it
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if answers():
                return True
            time.sleep(0.05)
    return False


class ApiClient:
    def __init__(self, conf: Conf | None = None) -> None:
        self.conf = conf or load_client_conf()
        c = self.conf
        self.timeout = float(c.get("API_TIMEOUT"))
        self.session: UnixSession | RequestsSession
        if c.exists("API_URL") and c.get("API_URL"):
            self.base = str(c.get("API_URL")).rstrip("/")
            self.where = self.base
        elif (c.exists("API_HOST") or c.exists("API_PORT")) and not c.exists("API_SOCKET"):
            ssl = c.exists("API_SSL") and str(c.get("API_SSL")).lower() != "false"
            scheme = "https" if ssl else "http"
            self.base = f"{scheme}://{c.get('API_HOST')}:{c.get('API_PORT')}{str(c.get('API_BASE')).rstrip('/')}"
            self.where = self.base
        else:
            path = str(c.get("API_SOCKET"))
            self.base = UNIX_BASE
            self.where = f"unix socket {path}"
            self.session = UnixSession(path)
        if not self.base.startswith(UNIX_BASE):
            self.session = RequestsSession()
            if "VERIFY_NONE" in str(c.get("API_VERIFY_SSL")).upper():
                self.session.verify = False
            token = self._token()
            if token:
                self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = f"cigri-cli/{__version__}"

    def _token(self) -> str | None:
        path = Path(os.path.expanduser(str(self.conf.get("API_TOKEN_FILE"))))
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://", "http+unix://")):
            return path
        return self.base + (path if path.startswith("/") else "/" + path)

    def request(self, method: str, path: str, **kw: Any) -> ApiResponse:
        kw.setdefault("timeout", (10, self.timeout))
        try:
            try:
                r = self.session.request(method, self.url(path), **kw)
            except Unreachable:
                local = _local_api_conf(self.conf) if self.base == UNIX_BASE else None
                if local is None or not start_local_api(local, str(self.conf.get("API_SOCKET"))):
                    raise
                r = self.session.request(method, self.url(path), **kw)
        except Unreachable as e:
            raise CliError(f"API server not reachable at {self.where}: {e}\n"
                           "(is cigri-api running? see API_SOCKET / API_URL in api-clients.conf)") from None
        except TimedOut:
            raise CliError(f"API server at {self.where} did not answer within {self.timeout:.0f} s") from None
        except RequestFailed as e:
            raise CliError(f"Request to {self.where} failed: {e}") from None
        return ApiResponse(r)

    def get_with_progress(self, path: str, label: str, **kw: Any) -> ApiResponse:
        """GET with a download progress bar on a terminal (large job outputs)."""
        if not sys.stderr.isatty() or not isinstance(self.session, RequestsSession):
            return self.get(path, **kw)  # (a local socket: no progress to show)
        import requests

        kw.setdefault("timeout", (10, self.timeout))
        try:
            r = self.session.s.get(self.url(path), stream=True, **kw)
            total = int(r.headers.get("content-length") or 0)
            chunks: list[bytes] = []
            if total > 1_000_000:
                with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
                    for chunk in r.iter_content(256 * 1024):
                        chunks.append(chunk)
                        bar.update(len(chunk))
                r._content = b"".join(chunks)
            else:
                r.content  # noqa: B018 - read the body now
        except requests.ConnectionError as e:
            raise CliError(f"API server not reachable at {self.where}: {_root_cause(e)}") from None
        except requests.RequestException as e:
            raise CliError(f"Request to {self.where} failed: {e}") from None
        return ApiResponse(r)

    def get(self, path: str, **kw: Any) -> ApiResponse:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> ApiResponse:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> ApiResponse:
        return self.request("DELETE", path, **kw)

    def put(self, path: str, **kw: Any) -> ApiResponse:
        return self.request("PUT", path, **kw)


def _root_cause(e: BaseException) -> str:
    while e.__context__ is not None and not isinstance(e, OSError):
        e = e.__context__
    inner = e.args[0] if e.args and isinstance(e.args[0], BaseException) else e
    s = str(inner)
    if "No such file" in s or "FileNotFoundError" in s:
        return "no such socket"
    if "Connection refused" in s or "ConnectionRefused" in s:
        return "connection refused"
    return s.split(":")[-1].strip() or s


# --------------------------------------------------------------------------- helpers for commands
def err(msg: str) -> None:
    from cigri.cli.formats import safe_text

    click.echo(safe_text(msg), err=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def api_failure(r: ApiResponse, what: str) -> CliError:
    """A non-2xx answer as the exit-1 error of a command."""
    if r.status == 403:
        return CliError(f"{what}: not allowed: {r.message}")
    return CliError(f"{what}: {r.message}")


def progress_lines(lines: Iterable[bytes], total_bytes: int, label: str) -> Iterator[bytes]:
    """Yield chunks while drawing a progress bar on a terminal (stderr) for large payloads."""
    if total_bytes < 1_000_000 or not sys.stderr.isatty():
        yield from lines
        return
    with click.progressbar(length=total_bytes, label=label, file=sys.stderr) as bar:
        for chunk in lines:
            bar.update(len(chunk))
            yield chunk


def run_command(cmd: click.Command, argv: list[str] | None = None) -> int:
    """click with CiGri3's exit codes: usage errors and API errors exit 1, broken pipes silently."""
    try:
        rv = cmd.main(args=argv, standalone_mode=False)
        return int(rv or 0) if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.UsageError as e:
        e.show()
        return 1
    except click.Abort:
        err("Aborted.")
        return 1
    except CliError as e:
        if e.message:
            err(e.message)
        return e.code
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        return 130
    except CigriError as e:  # e.g. a bad cigri.conf in the admin tools: its file and line, no traceback
        err(str(e))
        return 1
    except Exception as e:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(e, SQLAlchemyError):  # admin tools: database down, wrong password...
            err(f"Database error: {getattr(e, 'orig', None) or e}")
            return 1
        raise


def version_option(name: str) -> Any:
    return click.version_option(__version__, "--version", prog_name=name, message="%(prog)s v%(version)s")


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
