"""`cigri-api`: the REST API server (Unix socket with kernel identities, optional TCP)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cigri.config import Conf, get_conf, set_conf
from cigri.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cigri-api", description="Serve the CiGri REST API. By default on the Unix "
                                "socket API_LISTEN_SOCKET (callers identified by the kernel), and on TCP "
                                "API_LISTEN_HOST:API_LISTEN_PORT if set (trusted proxies or bearer tokens).")
    p.add_argument("--conf", help="cigri.conf to use (default: CiGri's lookup order)")
    p.add_argument("--socket", help="Unix socket path (overrides API_LISTEN_SOCKET; '' = none)")
    p.add_argument("--host", help="TCP address (overrides API_LISTEN_HOST; '' = none)")
    p.add_argument("--port", type=int, help="TCP port (overrides API_LISTEN_PORT)")
    p.add_argument("--log-level", default=None, help="debug, info, warning, error")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="worker processes sharing the sockets (default: number of CPUs, at most 4)")
    p.add_argument("--prepare", metavar="USER", help="as root, before the server starts as USER (the unit's "
                   "ExecStartPre): create the JWT secret API_JWT_SECRET_FILE if missing, owned by USER, mode 0600; "
                   "then exit")
    p.add_argument("--idle-exit", type=float, default=0, metavar="SECONDS",
                   help="exit after this many seconds without a request (local mode starts it on demand)")
    args = p.parse_args(argv)
    try:
        conf = Conf(args.conf) if args.conf else get_conf()
    except ConfigError as e:
        print(f"cigri-api: {e}", file=sys.stderr)
        return 1
    set_conf(conf)
    if args.prepare:
        return prepare(conf, args.prepare)
    level = (args.log_level or str(conf.get("LOG_LEVEL"))).lower()
    level = {"warn": "warning", "fatal": "critical"}.get(level, level)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    from cigri.api.server import serve

    try:
        serve(conf, args.socket, args.host, args.port, log_level=level, workers=args.workers,
              idle_exit=args.idle_exit)
    except OSError as e:
        print(f"cigri-api: cannot listen: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def prepare(conf: Conf, user: str) -> int:
    """What needs root once, so that the server itself never does: the secret, owned by its user."""
    import pwd

    from cigri.api.auth import load_secret

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        print(f"cigri-api: no user {user!r} (create it: useradd --system --user-group cigri)", file=sys.stderr)
        return 1
    path = str(conf.get("API_JWT_SECRET_FILE") or "")
    if not path:
        return 0
    if load_secret(path, create=True) is None:
        print(f"cigri-api: cannot create the JWT secret {path}", file=sys.stderr)
        return 1
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o600)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
