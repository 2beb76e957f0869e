"""The error types of CiGri: every user-facing failure is one of these,
so front doors can turn them into one clear message instead of a traceback."""

from __future__ import annotations

import logging


class CigriError(Exception):
    """Base error. Built with a logger, it logs 'Exception raised: <msg>' (CiGri3 habit)."""

    def __init__(self, message: str = "", logger: logging.Logger | None = None) -> None:
        super().__init__(message)
        self.message = message
        if logger is not None:
            logger.error("Exception raised: %s", message)

    def __str__(self) -> str:
        return self.message


class NotFound(CigriError):
    """A campaign, job, event, cluster or file does not exist."""


class Unauthorized(CigriError):
    """The caller may not see or act on this object."""


class ParseError(CigriError):
    """Bad JDL, parameter file or request body: the message names the field or line."""


class AdmissionRuleError(CigriError):
    """An admission rule rejected the campaign."""


class ConfigError(CigriError):
    """cigri.conf is unreadable, has an unknown variable or a malformed value."""


class StateError(CigriError):
    """The requested operation is not allowed in the object's current state."""
