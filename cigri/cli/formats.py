"""Human output shared by several commands (CiGri3's formats)."""

from __future__ import annotations

import re
import time
from typing import Any

import click

DASHES = "-" * 78
#: C0 and C1 controls, DEL, and the Unicode marks that reorder or hide text on a terminal
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_CONTROL_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100
                                                                 else f"\\u{ord(c):04x}")


def safe(v: Any) -> str:
    """A one-line field from outside (campaign or user name, parameters, code...) as
    printable text: control characters shown escaped, so that nothing another user wrote
    can move the cursor, clear the screen, set the clipboard or forge lines."""
    return _CONTROL.sub(_escape, "" if v is None else str(v))


def safe_text(v: Any) -> str:
    """Multi-line text from outside (event messages, job outputs, server messages): as
    `safe` but lines and tabs kept."""
    return _CONTROL_KEEP_LINES.sub(_escape, "" if v is None else str(v))
STATE_LETTER = {"in_treatment": "R", "paused": "P", "terminated": "T", "cancelled": "C"}


def local_time(epoch: int | float | None) -> str:
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H-%M-%S", time.localtime(epoch))


def progress(finished: int, total: int) -> str:
    pct = int(finished * 100 / total) if total else 0
    return f"{finished}/{total} ({pct}%)"


def campaign_line(c: dict[str, Any]) -> str:
    status = STATE_LETTER.get(c.get("state", ""), "?") + ("e" if c.get("has_events") else " ")
    name, user = safe(c.get("name"))[:19], safe(c.get("user"))[:16]
    return (f"{int(c['id']):<11d} {name:<19s} {user:<16s} {local_time(c.get('submission_time')):<19s} {status} "
            + progress(c.get("finished_jobs") or 0, c.get("total_jobs") or 0))


CAMPAIGN_HEADER = ("Campaign id Name                User             Submission time     S  Progress\n"
                   "----------- ------------------- ---------------- ------------------- -- --------")


def print_events(items: list[dict[str, Any]]) -> None:
    if not items:
        click.echo("No events!")
        return
    for e in items:
        click.echo(DASHES)
        line = f"{safe(e['id'])}: ({safe(e.get('state'))}) {safe(e.get('code'))}"
        if e.get("job_id") is not None:
            line += f" of job {e['job_id']}"
        line += f" at {safe(e.get('date_open'))}"
        if e.get("cluster_name"):
            line += f" on {safe(e['cluster_name'])}"
        if e.get("parent") is not None:
            line += f" because of {e['parent']}"
        click.echo(line)
        click.echo(safe_text(e.get("message")))
    click.echo(DASHES)


def ruby(v: Any) -> str:
    """Values printed the way CiGri3's Ruby did (true/false, empty for nil)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return safe(v)
