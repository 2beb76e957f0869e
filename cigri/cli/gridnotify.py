"""gridnotify: subscribe to notifications by mail or Jabber."""

from __future__ import annotations

import sys

import click

from cigri.cli.client import CONTEXT, ApiClient, CliError, api_failure, echo_json, run_command, version_option
from cigri.cli.formats import safe


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  gridnotify -m me@example.org -s high     mail me about serious events
  gridnotify -l                             list my subscriptions
  gridnotify -m me@example.org -u           unsubscribe""")
@click.option("-m", "--mail", metavar="ADDRESS", help="Mail address to (un)subscribe.")
@click.option("-j", "--jabber", metavar="JID", help="Jabber/XMPP id to (un)subscribe.")
@click.option("-s", "--severity", type=click.Choice(["low", "medium", "high"]), help="Minimum severity (to subscribe).")
@click.option("-u", "--unsubscribe", is_flag=True, help="Unsubscribe the given address.")
@click.option("-l", "--list", "list_", is_flag=True, help="List your subscriptions.")
@click.option("-v", "--verbose", is_flag=True, help="Print the API message after subscribing.")
@click.option("--json", "as_json", is_flag=True, help="With -l: JSON output.")
@version_option("gridnotify")
def cli(mail: str | None, jabber: str | None, severity: str | None, unsubscribe: bool, list_: bool, verbose: bool,
        as_json: bool) -> int:
    """Manage your notification subscriptions (campaign and cluster events)."""
    if not mail and not jabber and not list_:
        click.echo(click.get_current_context().get_help())
        return 0
    api = ApiClient()
    if list_:
        r = api.get("/notifications", params={"pretty": "true"})
        if not r.ok:
            raise api_failure(r, "Cannot list subscriptions")
        if as_json:
            echo_json(r.body.get("items", []))
            return 0
        click.echo("You have the following notification subscriptions:")
        for it in r.body.get("items", []):
            kind = "jabber" if it.get("type") == "xmpp" else it.get("type")
            sev = safe(it.get("severity") or "medium")
            click.echo(f" - {safe(kind)} on {safe(it.get('identity'))} with severity {sev}")
        if not mail and not jabber:
            return 0
    failed = False
    for kind, ident in (("mail", mail), ("jabber", jabber)):
        if not ident:
            continue
        if unsubscribe:
            r = api.delete(f"/notifications/{kind}", params={"identity": ident})
            if r.status != 202:
                failed = True
                click.echo(f"Failed to unsubscribe {ident}: {r.message.rstrip('.')}.", err=True)
            continue
        if severity is None:
            raise CliError("ERROR: Severity should be 'low', 'medium' or 'high'!", 2)
        r = api.post(f"/notifications/{kind}", json={"identity": ident, "severity": severity})
        if r.status != 201:
            failed = True
            click.echo(f"Failed to subscribe with {ident}: {r.message.rstrip('.')}.", err=True)
        elif verbose:
            click.echo(r.message)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))
