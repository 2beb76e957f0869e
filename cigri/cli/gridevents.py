"""gridevents: list and fix events; administrators can blacklist clusters."""

from __future__ import annotations

import sys
from typing import Any

import click

from cigri.cli.client import CONTEXT, ApiClient, CliError, echo_json, run_command, version_option
from cigri.cli.formats import print_events


def _items(r: Any) -> list[dict[str, Any]]:
    if r.ok and isinstance(r.body, dict):
        return list(r.body.get("items", []))
    return []


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  gridevents 12            open events of campaign 12 (and of its clusters)
  gridevents -c 12 -f -r   fix them and resubmit the jobs concerned
  gridevents -g            global (cluster) events
Administrators: --blacklist-cluster ID disables a cluster until its event is fixed.""")
@click.argument("campaign_arg", required=False, type=int, metavar="[CAMPAIGN_ID]")
@click.option("-c", "--campaign", type=int, help="Events of a campaign (or fix them with -f).")
@click.option("-g", "--global", "global_", is_flag=True, help="Current global events.")
@click.option("-e", "--event", type=int, help="One event (or fix it with -f).")
@click.option("-f", "--fix", is_flag=True, help="Close the event(s).")
@click.option("-r", "--resubmit", is_flag=True, help="With -f: resubmit the affected jobs.")
@click.option("-a", "--all", "all_", is_flag=True, help="Include closed events of the campaign.")
@click.option("--blacklist-cluster", type=int, metavar="ID", help="(admin) Disable a cluster manually.")
@click.option("--mark-job-event", type=int, metavar="ID", help="(admin) Put a job in the event state.")
@click.option("-v", "--verbose", is_flag=True, help="Print the API message after a fix.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@version_option("gridevents")
def cli(campaign_arg: int | None, campaign: int | None, global_: bool, event: int | None, fix: bool, resubmit: bool,
        all_: bool, blacklist_cluster: int | None, mark_job_event: int | None, verbose: bool, as_json: bool) -> int:
    """List the events of a campaign, one event or the global events; fix (close) them."""
    if campaign is None:
        campaign = campaign_arg
    if resubmit and not fix:
        raise CliError("Error: --resubmit must be used with --fix!", 2)
    api = ApiClient()
    if blacklist_cluster is not None or mark_job_event is not None:
        if blacklist_cluster is not None:
            body = {"class": "cluster", "cluster_id": blacklist_cluster, "code": "CLUSTER_MANUALLY_DISABLED",
                    "message": f"Cluster {blacklist_cluster} disabled by the administrator of the grid. "
                               "Please, be patient."}
        else:
            body = {"class": "job", "job_id": mark_job_event, "code": "MANUAL_EVENT",
                    "message": "The job has been marked in the event state by the administrator."}
        r = api.post("/events", json=body)
        if r.status != 201:
            raise CliError(f"Failed to add event: {r.message.rstrip('.')}.")
        if verbose:
            click.echo(r.message)
        return 0
    if campaign is None and event is None and not global_:
        raise CliError("Missing CAMPAIGN (-c), EVENT (-e) id or --global (-g)")
    query = "?resubmit=1" if resubmit else ""
    if fix:
        path = f"/events/{event}{query}" if event is not None else f"/campaigns/{campaign}/events{query}"
        if event is None and campaign is None:
            raise CliError("Missing CAMPAIGN (-c) or EVENT (-e) id to fix")
        r = api.delete(path)
        if r.status != 202:
            raise CliError(f"Failed to fix event(s): {r.message.rstrip('.')}.")
        if verbose:
            click.echo(r.message)
        return 0
    if event is not None:
        r = api.get(f"/events/{event}")
        if not r.ok:
            raise CliError(f"Event {event}: {r.message}")
        items = [r.body]
    elif global_:
        items = _items(api.get("/events"))
    else:
        r = api.get(f"/campaigns/{campaign}/events", params={"all": "1"} if all_ else None)
        if r.status in (403, 400) or (r.status == 404 and "not found" in r.message.lower()):
            raise CliError(f"Campaign {campaign}: {r.message}")
        items = _items(r)
    if as_json:
        echo_json(items)
    else:
        print_events(items)
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))


