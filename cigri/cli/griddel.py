"""griddel: cancel, pause, resume or purge campaigns; cancel one job."""

from __future__ import annotations

import sys

import click

from cigri.cli.client import CONTEXT, ApiClient, CliError, err, run_command, version_option


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  griddel 12 13        cancel campaigns 12 and 13
  griddel -p 12        pause campaign 12;  griddel -r 12  resumes it
  griddel -j 4242      cancel job 4242""")
@click.argument("ids", nargs=-1, type=int, metavar="[CAMPAIGN_ID]...")
@click.option("-c", "--campaign_ids", "campaign_ids", metavar="ID1,ID2,...", help="Campaigns to act on.")
@click.option("-p", "--pause", is_flag=True, help="Hold (pause) the campaigns.")
@click.option("-r", "--resume", is_flag=True, help="Resume paused campaigns.")
@click.option("--purge", is_flag=True, help="Purge finished (terminated or cancelled) campaigns.")
@click.option("-j", "--job", type=int, help="Cancel one job.")
@click.option("-v", "--verbose", is_flag=True, help="Print the API message on success.")
@version_option("griddel")
def cli(ids: tuple[int, ...], campaign_ids: str | None, pause: bool, resume: bool, purge: bool, job: int | None,
        verbose: bool) -> int:
    """Cancel (default), pause, resume or purge campaigns, or cancel one job."""
    targets: list[int] = []
    if campaign_ids:
        try:
            targets = [int(x) for x in campaign_ids.split(",") if x.strip()]
        except ValueError:
            raise CliError(f"Error: bad campaign id list {campaign_ids!r}") from None
    else:
        targets = list(ids)
    if not targets and job is None:
        raise CliError("Error: You need to provide at least one campaign_id or job_id!")
    api = ApiClient()

    def delete(path: str, what: str) -> bool:
        """DELETE `path`; False (and a message) when the API refuses."""
        r = api.delete(path)
        if r.status == 202:
            if verbose:
                click.echo(r.message)
            return True
        err(f"Failed to {what}: {r.message.rstrip('.')}.")
        return False

    failed = job is not None and not delete(f"/jobs/{job}", f"cancel job {job}")
    flag, verb = ("", "cancel")
    if purge:
        flag, verb = "?purge=1", "purge"
    elif resume:
        flag, verb = "?resume=1", "resume"
    elif pause:
        flag, verb = "?hold=1", "pause"
    for cid in targets:
        if not delete(f"/campaigns/{cid}{flag}", f"{verb} campaign {cid}"):
            failed = True
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))
