"""gridtoken: your JWT tokens for OAR3 clusters, and a bearer token for
using the CiGri API from another host (--api-token)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cigri.cli.client import CONTEXT, ApiClient, CliError, api_failure, echo_json, run_command, version_option
from cigri.cli.formats import safe


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  gridtoken -i 3 -t "$OAR_API_TOKEN"   register your token for cluster 3 (from `oarsub -T` there)
  gridtoken -l                         list your tokens
  gridtoken -r -i 3                    remove it
  gridtoken --api-token                save a CiGri API token in API_TOKEN_FILE (remote use)""")
@click.option("-i", "--cluster-id", type=int, help="Cluster id (as shown by gridclusters).")
@click.option("-t", "--token", help="Token string.")
@click.option("-r", "--remove", is_flag=True, help="With -i: remove your token for that cluster.")
@click.option("-l", "--list", "list_", is_flag=True, help="List your tokens.")
@click.option("-v", "--verbose", is_flag=True, help="Dump the API response.")
@click.option("--api-token", is_flag=True, help="Get a bearer token for the CiGri API and save it in API_TOKEN_FILE.")
@click.option("--for-user", help="With --api-token (administrators): a token for another user, printed.")
@click.option("--revoke-api-token", "revoke", is_flag=True,
              help="Revoke the API token saved in API_TOKEN_FILE (e.g. after a copy leaked), and delete the file.")
@click.option("--json", "as_json", is_flag=True, help="With -l: JSON output.")
@version_option("gridtoken")
def cli(cluster_id: int | None, token: str | None, remove: bool, list_: bool, verbose: bool, api_token: bool,
        for_user: str | None, revoke: bool, as_json: bool) -> int:
    """Manage the JWT tokens CiGri uses to submit your jobs on OAR3 clusters."""
    api = ApiClient()
    if revoke:
        path = Path(os.path.expanduser(str(api.conf.get("API_TOKEN_FILE"))))
        try:
            saved = path.read_text().strip()
        except OSError as e:
            raise CliError(f"No API token to revoke: cannot read {path}: {e.strerror}") from None
        r = api.delete("/auth/token", headers={"Authorization": f"Bearer {saved}"})
        if r.status != 202:
            raise api_failure(r, "Cannot revoke the API token")
        path.unlink(missing_ok=True)
        click.echo(f"{r.message} ({path} deleted)")
        return 0
    if api_token:
        r = api.post("/auth/token", json={"user": for_user} if for_user else {})
        if r.status != 201:
            raise api_failure(r, "Cannot get an API token")
        if for_user:
            click.echo(r.body["token"])
            return 0
        path = Path(os.path.expanduser(str(api.conf.get("API_TOKEN_FILE"))))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(r.body["token"] + "\n")
        click.echo(f"API token for {r.body['user']} saved in {path}")
        return 0
    if list_:
        r = api.get("/tokens")
        if not r.ok:
            raise api_failure(r, "Cannot list tokens")
        if as_json:
            echo_json(r.body.get("items", []))
            return 0
        click.echo("You have the following tokens:")
        for it in r.body.get("items", []):
            shown = safe(str(it.get("cluster_login") or "").removeprefix("Bearer "))
            click.echo(f" - Cluster #{safe(it['cluster_id'])} : {shown}")
        return 0
    if remove and cluster_id is not None:
        r = api.delete(f"/tokens/{cluster_id}")
        if verbose:
            echo_json(r.body)
        if r.status != 202:
            raise CliError(f"Failed to remove JWT token on cluster {cluster_id}: {r.message.rstrip('.')}.")
        return 0
    if cluster_id is not None and token:
        r = api.post("/tokens", json={"cluster_id": cluster_id, "token": token})
        if verbose:
            echo_json(r.body)
        if r.status != 201:
            raise CliError(f"Failed to register token on cluster {cluster_id}: {r.message.rstrip('.')}.")
        click.echo(r.message + ".")
        return 0
    click.echo(click.get_current_context().get_help())
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))
