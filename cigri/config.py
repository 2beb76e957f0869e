"""cigri.conf: CiGri3's `VAR = "value"` format, every variable of spec §13 with its
default, plus CiGri-py's additions. Unlike CiGri3, unquoted values are accepted and
unknown variables or malformed values are refused with the file and line named."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cigri.errors import ConfigError


def _int(v: str) -> int:
    return int(v)


def _float(v: str) -> float:
    return float(v)


def _str(v: str) -> str:
    return v


def _bool(v: str) -> bool:
    low = v.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {v!r}")


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        for a in allowed:
            if v.lower() == a.lower():
                return a
        raise ValueError(f"expected one of {', '.join(allowed)}, got {v!r}")

    return check


def _walltime(v: str) -> str:
    if not re.fullmatch(r"\d+(:\d{1,2}){0,2}", v):
        raise ValueError(f"expected HH:MM:SS, got {v!r}")
    return v


@dataclass(frozen=True)
class Var:
    default: Any
    parse: Callable[[str], Any]
    doc: str = ""


# Every variable CiGri knows. CiGri3's names and defaults first (spec §13.2, §13.3),
# then CiGri-py's additions (documented in docs/compat.md and conf/cigri.conf).
VARIABLES: dict[str, Var] = {
    # --- database
    "DATABASE_TYPE": Var("PostgreSQL", _choice("PostgreSQL", "SQLite"), "PostgreSQL or SQLite"),
    "DATABASE_HOST": Var("127.0.0.1", _str),
    "DATABASE_PORT": Var(5432, _int),
    "DATABASE_NAME": Var("cigri3", _str),
    "DATABASE_USER_NAME": Var("cigri3", _str),
    "DATABASE_USER_PASSWORD": Var("cigri3", _str),
    "DATABASE_SSL_MODE": Var("prefer", _choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full")),
    "DATABASE_PATH": Var("", _str, "SQLite file (DATABASE_TYPE=SQLite)"),
    "INSTALL_PATH": Var("/usr/local/share/cigri/", _str),
    # --- engine
    "REMOTE_WAITING_TIMEOUT": Var(900, _int),
    "AUTOFIX_DELAY": Var(30, _int),
    "DEFAULT_JOB_RESOURCES": Var("/resource_id=1", _str),
    "DEFAULT_JOB_WALLTIME": Var("01:00:00", _walltime),
    "STRESS_FACTOR": Var(0.8, _float),
    "PID_FILE": Var("", _str),
    "LOG_FILE": Var("STDOUT", _str),
    "LOG_LEVEL": Var("INFO", _choice("DEBUG", "INFO", "WARN", "ERROR", "FATAL")),
    "LOG_JOBS": Var(False, _bool),
    "LOG_JOBS_DIRECTORY": Var("/var/log/cigri_jobs", _str),
    "STDERR_TAIL": Var(5, _int),
    "REST_QUERIES_TIMEOUT": Var(30, _int),
    "REST_CLIENT_CERTIFICATE_FILE": Var("", _str),
    "REST_CLIENT_KEY_FILE": Var("", _str),
    "REST_CLIENT_CA_FILE": Var("", _str),
    "REST_CLIENT_VERIFY_SSL": Var(True, _bool),
    "RUNNER_MIN_CYCLE_DURATION": Var(5, _float),
    "RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": Var(2, _int),
    "RUNNER_TAP_INCREASE_FACTOR": Var(1.5, _float),
    "RUNNER_TAP_INCREASE_MAX": Var(100, _int),
    "RUNNER_TAP_GRACE_PERIOD": Var(60, _int),
    "RUNNER_TEMPORAL_GROUPING_DURATION": Var(900, _int),
    "RUNNER_MAX_TEMPORAL_GROUPED_JOBS": Var(50, _int),
    "API_HEADER_USERNAME": Var("HTTP_X_CIGRI_USER", _str),
    "CAMPAIGN_THROUGHPUT_WINDOW": Var(3600, _int),
    "NOTIFICATIONS_SMTP_SERVER": Var("", _str),
    "NOTIFICATIONS_SMTP_PORT": Var(25, _int),
    "NOTIFICATIONS_SMTP_FROM": Var("cigri@please.configure.me", _str),
    "NOTIFICATIONS_SMTP_SUBJECT_TAG": Var("[CIGRI]", _str),
    "NOTIFICATIONS_XMPP_SERVER": Var("", _str),
    "NOTIFICATIONS_XMPP_PORT": Var(5222, _int),
    "NOTIFICATIONS_XMPP_IDENTITY": Var("", _str),
    "NOTIFICATIONS_XMPP_PASSWORD": Var("", _str),
    "ADMISSION_RULES_USER": Var("cigri-rules", _str),
    "GRID_USAGE_UPDATE_PERIOD": Var(60, _int),
    "GRID_USAGE_SYNC_TIME": Var(10, _int),
    # --- api-clients.conf (spec §13.3)
    "API_HOST": Var("localhost", _str),
    "API_PORT": Var(80, _int),
    "API_BASE": Var("/cigri-api", _str),
    "API_TIMEOUT": Var(60, _int),
    "API_SSL": Var("false", _str),
    "API_VERIFY_SSL": Var("", _str),
    # --- CiGri-py additions
    "ALMIGHTY_CYCLE": Var(2.0, _float, "seconds between two meta-scheduler/updator/nikita passes"),
    "MODULE_TIMEOUT": Var(300, _int, "seconds a periodic module may run"),
    "RESTART_DELAY": Var(5.0, _float, "seconds before a crashed daemon is restarted"),
    "JUDAS_POLL": Var(2.0, _float, "seconds between notification passes when not woken"),
    "SCHEDULER_STACK_SIZE": Var(500, _int),
    "PARAMS_INSERT_SLICE": Var(10000, _int),
    "NIKITA_WALLTIME_MARGIN": Var(1800, _int),
    "AFFINITY_CLEAN_PERIOD": Var(3600, _int),
    "NOTIFICATIONS_MAX_LOG": Var(30, _int),
    "NOTIFICATIONS_MAX_EVENTS": Var(15, _int),
    "OUTPUT_TAIL_LINES": Var(100000, _int),
    "DB_RECONNECT_DELAY": Var(10.0, _float),
    "DEFAULT_MAX_RESUBMIT": Var(20, _int, "per-task resubmissions before TOO_MANY_RESUBMIT"),
    "NIGHTLY_START": Var("19:00", _str, "start of the nightly window (local time)"),
    "NIGHTLY_END": Var("07:00", _str, "end of the nightly window (local time)"),
    "RUNNER_WAITING_GRACE": Var(10, _int, "seconds a just-submitted job may wait before it closes its tap"),
    "API_LISTEN_SOCKET": Var("/run/cigri/api.sock", _str, "Unix socket of the API (SO_PEERCRED identity)"),
    "API_LISTEN_HOST": Var("", _str, "TCP address of the API ('' = no TCP listener)"),
    "API_LISTEN_PORT": Var(8080, _int),
    "API_TRUSTED_PROXIES": Var("", _str, "comma-separated addresses allowed to set the identity header"),
    "API_JWT_SECRET_FILE": Var("/etc/cigri/api-jwt.secret", _str),
    "API_JWT_LIFETIME": Var(86400 * 30, _int),
    "API_ADMINS": Var("root", _str, "comma-separated grid logins with administrator rights"),
    "API_HEADER_TIMEOUT": Var(10.0, _float, "seconds a client has to send a request's headers"),
    "API_BODY_TIMEOUT": Var(30.0, _float, "seconds a request's body may pause before the connection is closed"),
    "API_MAX_CONNECTIONS": Var(256, _int, "open connections per API worker (requests beyond: 503)"),
    "API_MAX_BODY_SIZE": Var(256 * 1024 * 1024, _int, "largest request body (bytes) the API reads: a JDL with "
                             "its params, or tasks added to a campaign; bigger ones get 413"),
    "API_SOCKET": Var("/run/cigri/api.sock", _str, "client side: Unix socket of the API"),
    "API_TOKEN_FILE": Var("~/.cigri/token", _str, "client side: JWT for remote access"),
    "API_URL": Var("", _str, "client side: full API URL (overrides API_HOST/PORT/BASE)"),
    "LOCAL_CORES": Var(0, _int, "cores of the local cluster (0 = all)"),
    "LOCAL_STATE_DIR": Var("", _str, "where local-mode jobs keep their state"),
}

_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if raw.startswith(("\"", "'")):
        raise ValueError("unterminated quoted value")
    # Unquoted values may carry a trailing comment.
    return raw.split(" #", 1)[0].strip()


class Conf:
    """A parsed configuration file. `get` returns typed values with defaults."""

    def __init__(self, path: str | os.PathLike[str] | None = None, values: dict[str, str] | None = None):
        self.path = str(path) if path is not None else None
        self._raw: dict[str, str] = {}
        self._typed: dict[str, Any] = {}
        if self.path is not None:
            try:
                text = Path(self.path).read_text()
            except OSError as e:
                raise ConfigError(f"Unable to open config file {self.path}! ({e.strerror})") from None
            self._parse(text)
        for k, v in (values or {}).items():
            self._set(k, str(v), f"override {k}")

    def _parse(self, text: str) -> None:
        for n, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            m = _LINE.match(line)
            where = f"{self.path}:{n}"
            if not m:
                raise ConfigError(f"{where}: malformed line (expected VAR = \"value\"): {stripped}")
            self._set(m.group(1), m.group(2), where)

    def _set(self, name: str, raw: str, where: str) -> None:
        var = VARIABLES.get(name)
        if var is None:
            raise ConfigError(f"{where}: unknown variable {name}")
        try:
            value = _unquote(raw)
            typed = var.parse(value)
        except ValueError as e:
            raise ConfigError(f"{where}: bad value for {name}: {e}") from None
        self._raw[name] = value
        self._typed[name] = typed

    def exists(self, name: str) -> bool:
        return name in self._raw

    def get(self, name: str, default: Any = None) -> Any:
        if name in self._typed:
            return self._typed[name]
        var = VARIABLES.get(name)
        if var is None:
            return default
        return var.default if default is None else default

    def scan(self) -> int:
        return len(self._raw)

    def with_values(self, **values: Any) -> Conf:
        """A copy with some variables overridden (tests, local mode)."""
        c = Conf()
        c.path = self.path
        c._raw = dict(self._raw)
        c._typed = dict(self._typed)
        for k, v in values.items():
            c._set(k, str(v), f"override {k}")
        return c

    def __contains__(self, name: str) -> bool:
        return self.exists(name)


def find_conf_file() -> str | None:
    """CiGri3's lookup order (spec §13.1)."""
    env = os.environ.get("CIGRICONFFILE")
    if env:
        return env
    candidates = []
    for var in ("CIGRICONFDIR", "CIGRIDIR"):
        d = os.environ.get(var)
        if d:
            candidates.append(os.path.join(d, "cigri.conf"))
    candidates += ["./cigri.conf", "./etc/cigri.conf", "/etc/cigri/cigri.conf"]
    for c in candidates:
        if os.path.isfile(c):
            return c
    return None


def user_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "cigri"


def embedded_conf() -> Conf:
    """No configuration at all: a SQLite database in the user's data directory (local mode)."""
    d = user_data_dir()
    return Conf(values={"DATABASE_TYPE": "SQLite", "DATABASE_PATH": str(d / "cigri.sqlite"),
                        "LOCAL_STATE_DIR": str(d / "local"), "API_SOCKET": str(d / "api.sock"),
                        "API_LISTEN_SOCKET": str(d / "api.sock"), "RUNNER_MIN_CYCLE_DURATION": "0.5",
                        "ALMIGHTY_CYCLE": "0.5", "RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "50",
                        "RUNNER_TAP_GRACE_PERIOD": "5", "GRID_USAGE_UPDATE_PERIOD": "0",
                        "RUNNER_TAP_INCREASE_MAX": "500"})


_conf: Conf | None = None


def get_conf() -> Conf:
    """The process-wide configuration (loaded once)."""
    global _conf
    if _conf is None:
        path = find_conf_file()
        _conf = Conf(path) if path else embedded_conf()
    return _conf


def set_conf(conf: Conf | None) -> None:
    global _conf
    _conf = conf
