"""Who may act on what: the one rule used by the API, the commands and the library's
operations. A user acts on what they own; the administrators (API_ADMINS) on everything."""

from __future__ import annotations

from collections.abc import Iterable

from cigri.config import Conf, get_conf


def admins_of(conf: Conf | None = None) -> tuple[str, ...]:
    """The administrators' grid logins (API_ADMINS; `root` when empty)."""
    raw = (conf or get_conf()).get("API_ADMINS") or ""
    return tuple(a.strip() for a in str(raw).split(",") if a.strip()) or ("root",)


def is_admin(user: str | None, admins: Iterable[str]) -> bool:
    return user is not None and user in tuple(admins)


def may_act_on(user: str | None, owner: str | None, admins: Iterable[str]) -> bool:
    """Owner or administrator."""
    return user is not None and (user == owner or is_admin(user, admins))
