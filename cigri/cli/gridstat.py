"""gridstat: campaigns, their tasks and events, one job, its outputs."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cigri.cli.client import CONTEXT, ApiClient, CliError, api_failure, echo_json, run_command, version_option
from cigri.cli.formats import CAMPAIGN_HEADER, campaign_line, local_time, print_events, progress, ruby, safe, safe_text


def _fmt_rate(v: float | None, per_hour: bool = False) -> str:
    if v is None:
        return ""
    return str(round(v * (3600 if per_hour else 1), 1))


def print_campaign(c: dict[str, Any], stats: dict[str, Any]) -> None:
    click.echo(f"Campaign: {c['id']}")
    click.echo(f"  Name: {safe(c.get('name'))}")
    click.echo(f"  User: {safe(c.get('user'))}")
    click.echo(f"  Date: {local_time(c.get('submission_time'))}")
    click.echo(f"  State: {safe(c.get('state'))}" + (" (events)" if c.get("has_events") else ""))
    click.echo(f"  Progress: {progress(c.get('finished_jobs') or 0, c.get('total_jobs') or 0)}")
    click.echo("  Stats: ")
    click.echo(f"    average_jobs_duration: {ruby(stats.get('average_jobs_duration'))}")
    click.echo(f"    stddev_jobs_duration: {ruby(stats.get('stddev_jobs_duration'))}")
    tp = float(stats.get("jobs_throughput") or 0) * 3600
    click.echo(f"    jobs_throughput: {'~' if tp < 0.01 else round(tp, 1)} jobs/h")
    rt = float(stats.get("remaining_time") or 0) / 3600
    click.echo(f"    remaining_time: {'~' if rt > 10000 else round(rt, 1)} hours")
    click.echo(f"    failures_rate: {round(float(stats.get('failures_rate') or 0) * 100, 1)} %")
    click.echo(f"    resubmit_rate: {round(float(stats.get('resubmit_rate') or 0) * 100, 1)} %")
    click.echo("  Clusters: ")
    for cl in (c.get("clusters") or {}).values():
        click.echo(f"    {safe(cl.get('cluster_name'))}:")
        for k in ("active_jobs", "queued_jobs", "prologue_ok", "epilogue_ok"):
            click.echo(f"      {k}: {ruby(cl.get(k))}")


def _star(v: Any) -> str:
    return "*" if v is None else str(v)


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  gridstat                     your and others' running campaigns
  gridstat -c 12               campaign 12 with statistics and clusters
  gridstat -c 12 -f --state event   its tasks whose job is in the event state
  gridstat -j 4242 -O          stdout of job 4242""")
@click.argument("campaign_arg", required=False, type=int, metavar="[CAMPAIGN_ID]")
@click.option("-c", "--campaign", type=int, help="Only this campaign.")
@click.option("-d", "--dump", is_flag=True, help="Print the raw JSON returned by the API.")
@click.option("-p", "--pretty", is_flag=True, help="With -d: pretty JSON.")
@click.option("-f", "--full", is_flag=True, help="With -c: also list the tasks/jobs.")
@click.option("-o", "--offset", type=int, default=None, help="Start the job listing at offset N (with -f).")
@click.option("--state", help="With -f: only tasks in this state (e.g. running, event, terminated, queued, pending).")
@click.option("-e", "--events", is_flag=True, help="Print the open events of the campaign.")
@click.option("-j", "--job", type=int, help="Print a CiGri job.")
@click.option("-C", "--cinfos", is_flag=True, help="With -j: the batch scheduler's details (JSON).")
@click.option("-O", "--stdout", "out", is_flag=True, help="With -j: print the job's stdout file.")
@click.option("-E", "--stderr", "errf", is_flag=True, help="With -j: print the job's stderr file.")
@click.option("-J", "--jdl", is_flag=True, help="Print the campaign's expanded JDL.")
@click.option("-H", "--headerless", is_flag=True, help="No column titles.")
@click.option("-u", "--username", help="Only campaigns of USER.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@version_option("gridstat")
def cli(campaign_arg: int | None, campaign: int | None, dump: bool, pretty: bool, full: bool, offset: int | None,
        state: str | None, events: bool, job: int | None, cinfos: bool, out: bool, errf: bool, jdl: bool,
        headerless: bool, username: str | None, as_json: bool) -> int:
    """Show campaigns, their tasks and events, a job and its output files."""
    if campaign is None and job is None:
        campaign = campaign_arg
    if events and campaign is None:
        raise CliError("You must give a campaign id to print the events!")
    if jdl and campaign is None:
        raise CliError("You must give a campaign id to print the JDL!")
    if full and campaign is None:
        raise CliError("You must provide a campaign id with --full!")
    if (out or errf) and job is None:
        raise CliError("You must provide a job id (-j <id>) with --stdout/--stderr!")
    if cinfos and job is None:
        raise CliError("You must provide a job id (-j <id>) with --cinfos!")
    api = ApiClient()
    raw = dump or as_json

    if job is not None:
        path = f"/jobs/{job}" + ("/stdout" if out else "/stderr" if errf else "/cinfos" if cinfos else "")
        job_params = {"pretty": "true"} if (pretty or cinfos) else None
        r = api.get_with_progress(path, "Fetching output", params=job_params) if (out or errf) \
            else api.get(path, params=job_params)
        if out or errf:
            if r.ok and not as_json:
                click.echo(safe_text(r.body.get("output", "")), nl=False)
                return 0
            if r.ok:
                echo_json(r.body)
                return 0
            if isinstance(r.body, dict) and r.body.get("status") == 404:
                raise CliError(f"File not found:\n{r.message}")
            raise api_failure(r, f"Cannot get the output of job {job}")
        if not r.ok:
            raise api_failure(r, f"Job {job}")
        if raw or cinfos:
            click.echo(r.text.rstrip("\n"))
            return 0
        for k, v in r.body.items():
            if k != "links":
                click.echo(f"{safe(k)}: {json.dumps(v) if isinstance(v, dict | list) else ruby(v)}")
        return 0

    if campaign is None:
        params: dict[str, Any] = {"pretty": "true"} if pretty else {}
        if username:
            params["user"] = username
        r = api.get("/campaigns", params=params)
        if not r.ok:
            raise api_failure(r, "Cannot list campaigns")
        if raw:
            click.echo(r.text.rstrip("\n"))
            return 0
        if not headerless:
            click.echo(CAMPAIGN_HEADER)
        for c in sorted(r.body.get("items", []), key=lambda c: int(c["id"])):
            click.echo(campaign_line(c))
        return 0

    base = f"/campaigns/{campaign}"
    if jdl:
        r = api.get(base + "/jdl", params={"pretty": "true"})
        if not r.ok:
            raise api_failure(r, f"Campaign {campaign}")
        click.echo(r.text.rstrip("\n"))
        return 0
    if events:
        r = api.get(base + "/events", params={"pretty": "true"} if pretty else None)
        if r.status == 404 and not (isinstance(r.body, dict) and "not found" in r.message.lower()):
            r.body = {"items": []}
        elif not r.ok:
            raise api_failure(r, f"Campaign {campaign}")
        if raw:
            echo_json(r.body) if as_json else click.echo(r.text.rstrip("\n"))
        else:
            print_events(r.body.get("items", []))
        return 0
    if full:
        return _jobs(api, campaign, offset, state, dump, pretty, as_json)
    stats_call = None
    if not dump or as_json:  # both calls at once: gridstat -c waits for the slower one only
        from concurrent.futures import ThreadPoolExecutor  # (here: a third of a ms less for other calls)

        stats_call = ThreadPoolExecutor(1).submit(ApiClient(api.conf).get, base + "/stats")
    r = api.get(base, params={"pretty": "true"} if pretty else None)
    if r.status == 404:
        raise CliError(f"Campaign {campaign} not found!")
    if not r.ok:
        raise api_failure(r, f"Campaign {campaign}")
    if dump and not as_json:
        click.echo(r.text.rstrip("\n"))
        return 0
    s = stats_call.result() if stats_call is not None else api.get(base + "/stats")
    stats = s.body if s.ok and isinstance(s.body, dict) else {}
    if as_json:
        echo_json(r.body | {"stats": stats})
        return 0
    print_campaign(r.body, stats)
    return 0


def _jobs(api: ApiClient, campaign: int, offset: int | None, state: str | None, dump: bool, pretty: bool,
          as_json: bool) -> int:
    params: dict[str, Any] = {} if dump else {"limit": 1000}  # big pages: a 1M-task listing is 1000 calls
    if offset is not None:
        params["offset"] = offset
    if state:
        params["state"] = state
    r = api.get(f"/campaigns/{campaign}/jobs", params=params or None)
    if r.status == 404:
        raise CliError(f"Campaign {campaign} not found!")
    if not r.ok:
        raise api_failure(r, f"Campaign {campaign}")
    if dump and not as_json:
        if pretty:
            r = api.get(f"/campaigns/{campaign}/jobs", params=(params | {"pretty": "true"}))
        click.echo(r.text.rstrip("\n"))
        return 0
    if not as_json:
        click.echo(" Jobs:")
    all_items: list[dict[str, Any]] = []
    while True:
        items = r.body.get("items", [])
        for it in items:
            if as_json:
                all_items.append(it)
            else:
                click.echo(f"  {it['id']}: {_star(it.get('cigri_job_id'))},{_star(it.get('remote_id'))},"
                           f"{safe(it.get('state'))},{safe(_star(it.get('cluster')))},{safe(it.get('name'))},"
                           f"{safe(it.get('parameters'))}")
        nxt = next((lk["href"] for lk in r.body.get("links", []) if lk.get("rel") == "next"), None)
        if not nxt or not items:
            break
        r = api.get(nxt)
        if not r.ok:
            raise api_failure(r, f"Campaign {campaign}")
    if as_json:
        echo_json(all_items)
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))
