"""gridclusters: the grid's clusters, their state and usage (spec §12.7)."""

from __future__ import annotations

import sys
from typing import Any

import click

from cigri.cli.client import CONTEXT, ApiClient, api_failure, echo_json, run_command, version_option
from cigri.cli.formats import safe

WIDTH = 80
USAGE_KEYS = ("max_resources", "used_resources", "used_by_cigri", "unavailable_resources")


def usage_bar(u: dict[str, Any]) -> str:
    """red = unavailable, yellow = used by others, white = used by CiGri, green = free."""
    mx = int(u.get("max_resources") or 0)
    if mx <= 0:
        return ""
    unav = int(u.get("unavailable_resources") or 0) * WIDTH // mx
    cigri = int(u.get("used_by_cigri") or 0) * WIDTH // mx
    others = max(int(u.get("used_resources") or 0) - int(u.get("used_by_cigri") or 0), 0) * WIDTH // mx
    free = max(WIDTH - unav - cigri - others, 0)
    return (click.style(" " * unav, bg="red") + click.style(" " * others, bg="yellow")
            + click.style(" " * cigri, bg="white") + click.style(" " * free, bg="green"))


@click.command(context_settings=CONTEXT)
@click.option("-i", "--infos", is_flag=True, help="SSH host, stress factor and blacklist state of each cluster.")
@click.option("-I", "--more_infos", "more", is_flag=True, help="Every known field of each cluster.")
@click.option("-u", "--usage", is_flag=True, help="Latest grid usage of each cluster (implies -i).")
@click.option("-b", "--bars", is_flag=True, help="Coloured 80-column usage bars (implies -i -u).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@version_option("gridclusters")
def cli(infos: bool, more: bool, usage: bool, bars: bool, as_json: bool) -> int:
    """List the clusters of the grid, with their state and usage."""
    infos = infos or usage or bars
    usage = usage or bars
    api = ApiClient()
    r = api.get("/clusters")
    if not r.ok:
        raise api_failure(r, "Cannot list clusters")
    items = sorted(r.body.get("items", []), key=lambda c: int(c["id"]))
    latest: dict[int, dict[str, Any]] = {}
    if usage or as_json:
        u = api.get("/gridusage")
        if u.ok and u.body.get("items"):
            latest = {int(c["cluster_id"]): c for c in u.body["items"][-1].get("clusters", [])
                      if c.get("cluster_id") is not None}
    details: dict[int, dict[str, Any]] = {}
    if infos or more or as_json:
        for c in items:
            one = api.get(f"/clusters/{c['id']}")
            if one.ok:
                details[int(c["id"])] = one.body
    if as_json:
        echo_json([details.get(int(c["id"]), c) | {"usage": latest.get(int(c["id"]))} for c in items])
        return 0
    for c in items:
        cid = int(c["id"])
        d = details.get(cid, {})
        batch = c.get("batch") or d.get("batch")
        line = f"{cid}: {safe(c['name'])}" + (f" ({safe(batch)})" if batch else "")
        if infos:
            line += f" , {safe(d.get('ssh_host'))} (stress:{safe(d.get('stress_factor'))}"
            line += ", BLACKLISTED" if d.get("blacklisted") else ""
            line += ", UNDER_STRESS" if d.get("under_stress") else ""
            line += ")"
        if more:
            for k, v in d.items():
                if v is not None and k != "links":
                    line += f"\n    {safe(k)}: {safe(v)}"
        if usage:
            snap = latest.get(cid)
            if snap is None or d.get("blacklisted"):
                line += "\n    Data temporarily unavailable"
            elif bars:
                line += f" ({snap.get('max_resources')} resources)\n    " + usage_bar(snap)
            else:
                for k in USAGE_KEYS:
                    line += f"\n    {k}: {safe(snap.get(k))}"
        click.echo(line)
    if bars:
        click.echo("Legend: " + click.style(" unavailable ", bg="red") + " " + click.style(" used ", bg="yellow")
                   + " " + click.style(" used by cigri ", bg="white", fg="black") + " "
                   + click.style(" free ", bg="green"))
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))
