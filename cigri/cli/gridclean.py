"""gridclean: list the finished jobs of campaigns per cluster (CiGri3's stub).
Cleaning the clusters' scratch directories is not implemented (as in CiGri3)."""

from __future__ import annotations

import sys
from typing import Any

import click

from cigri.cli.client import CONTEXT, ApiClient, CliError, api_failure, echo_json, run_command, version_option


@click.command(context_settings=CONTEXT)
@click.argument("campaign_ids", nargs=-1, type=int, metavar="CAMPAIGN_ID...")
@click.option("-v", "--verbose", is_flag=True, help="Print the jobs found.")
@click.option("--json", "as_json", is_flag=True, help="JSON output: cluster id -> remote ids.")
@version_option("gridclean")
def cli(campaign_ids: tuple[int, ...], verbose: bool, as_json: bool) -> int:
    """Group the finished jobs of campaigns by cluster (cleaning itself is not implemented)."""
    if not campaign_ids:
        raise CliError("Missing CAMPAIGN_ID")
    api = ApiClient()
    out: dict[int, list[Any]] = {}
    for cid in campaign_ids:
        r = api.get(f"/campaigns/{cid}/jobs/finished")
        if not r.ok:
            raise api_failure(r, f"Campaign {cid}")
        by_cluster: dict[int, list[Any]] = {}
        for j in r.body.get("items", []):
            if j.get("cluster_id") is not None and j.get("remote_id") is not None:
                by_cluster.setdefault(int(j["cluster_id"]), []).append(j["remote_id"])
        for cl, ids in sorted(by_cluster.items()):
            out.setdefault(cl, []).extend(ids)
            if not as_json:
                for i in range(0, len(ids), 100):
                    click.echo(f"Getting {','.join(map(str, ids[i:i + 100]))} from cluster {cl}...")
    if as_json:
        echo_json({str(k): v for k, v in out.items()})
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))
