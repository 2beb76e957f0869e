"""Human output shared by several commands (CiGri3's formats, spec §12)."""

from __future__ import annotations

import time
from typing import Any

import click

DASHES = "-" * 78
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
    name, user = str(c.get("name") or "")[:19], str(c.get("user") or "")[:16]
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
        line = f"{e['id']}: ({e.get('state')}) {e.get('code')}"
        if e.get("job_id") is not None:
            line += f" of job {e['job_id']}"
        line += f" at {e.get('date_open')}"
        if e.get("cluster_name"):
            line += f" on {e['cluster_name']}"
        if e.get("parent") is not None:
            line += f" because of {e['parent']}"
        click.echo(line)
        click.echo(e.get("message") or "")
    click.echo(DASHES)


def ruby(v: Any) -> str:
    """Values printed the way CiGri3's Ruby did (true/false, empty for nil)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
