"""CiGri3's log format, used by every daemon.

File:   [YYYY-MM-DD HH:MM:SS.<usec>][<S>][<pid>][<progname>] <message>
Stream: [YYYY-MM-DD HH:MM:SS][<S>][<progname>] <message>  (ANSI colours on a terminal)
LOG_FILE is STDOUT, STDERR or a path; LOG_LEVEL is DEBUG|INFO|WARN|ERROR|FATAL."""

from __future__ import annotations

import logging
import os
import sys
import weakref
from datetime import datetime
from typing import Any

from cigri.config import Conf, get_conf
from cigri.errors import ConfigError

LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING, "WARNING": logging.WARNING,
          "ERROR": logging.ERROR, "FATAL": logging.CRITICAL}
_LETTER = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}
_RESET = "\033[0m"


def _prog_colour(progname: str) -> str:
    p = progname.upper()
    if p.startswith("ALMIGHTY"):
        return "\033[32m"
    if p.startswith("RUNNER"):
        return "\033[34m"
    if "SCHEDULER" in p:
        return "\033[36m"
    if p.startswith("JUDAS"):
        return "\033[33m"
    if "LIB" in p:
        return "\033[37m"
    return ""


class CigriFormatter(logging.Formatter):
    def __init__(self, progname: str, to_file: bool, colour: bool = False) -> None:
        super().__init__()
        self.progname, self.to_file, self.colour = progname, to_file, colour

    def format(self, record: logging.LogRecord) -> str:
        t = datetime.fromtimestamp(record.created)
        letter = _LETTER.get(record.levelno, "I")
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if self.to_file:
            return f"[{t:%Y-%m-%d %H:%M:%S}.{t.microsecond:06d}][{letter}][{record.process}][{self.progname}] {msg}"
        prog = self.progname
        if self.colour:
            c = _prog_colour(prog)
            prog = f"{c}{prog}{_RESET}" if c else prog
            if record.levelno >= logging.ERROR:
                letter = f"\033[41m{letter}{_RESET}"
            elif record.levelno == logging.WARNING:
                letter = f"\033[35m{letter}{_RESET}"
        return f"[{t:%Y-%m-%d %H:%M:%S}][{letter}][{prog}] {msg}"


#: the handlers setup_logging installed (a new call replaces them)
_installed: weakref.WeakSet[logging.Handler] = weakref.WeakSet()


def setup_logging(progname: str, conf: Conf | None = None, *, logger: str = "cigri", **extra: Any) -> logging.Logger:
    """Configure the `cigri` logger hierarchy for a program (a program name
    is required; an unwritable path or unexpected arguments are refused). Returns the logger."""
    if not progname or not isinstance(progname, str):
        raise ConfigError("setup_logging needs a program name")
    if extra:
        raise ConfigError(f"setup_logging: unexpected arguments {', '.join(sorted(extra))}")
    conf = conf or get_conf()
    dest = str(conf.get("LOG_FILE") or "STDOUT")
    level = LEVELS.get(str(conf.get("LOG_LEVEL") or "INFO").upper(), logging.INFO)
    handler: logging.Handler
    if dest.upper() in ("STDOUT", "STDERR"):
        stream = sys.stdout if dest.upper() == "STDOUT" else sys.stderr
        handler = logging.StreamHandler(stream)
        colour = hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")
        handler.setFormatter(CigriFormatter(progname, to_file=False, colour=bool(colour)))
    else:
        try:
            handler = logging.FileHandler(dest, encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"Cannot open log file {dest}: {e.strerror}") from None
        handler.setFormatter(CigriFormatter(progname, to_file=True))
    log = logging.getLogger(logger)
    for h in list(log.handlers):
        if h in _installed:
            log.removeHandler(h)
            h.close()
    _installed.add(handler)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def setup_daemon_logging(progname: str, conf: Conf | None = None) -> logging.Logger:
    """A daemon keeps running when LOG_FILE cannot be opened: it logs to stderr and says why."""
    try:
        return setup_logging(progname, conf)
    except ConfigError as e:
        log = setup_logging(progname, (conf or get_conf()).with_values(LOG_FILE="STDERR"))
        log.error("%s: logging to stderr instead", e)
        return log
