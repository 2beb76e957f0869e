"""Administrator tools, run on the CiGri server with database access (spec §12.10):
`cigri-admin cluster add|list|set|enable|disable|test`, `cigri-admin api-token USER`,
CiGri3's `newcluster` (11 positional arguments) and `grid_test_cluster -c -f -u`."""

from __future__ import annotations

import ast
import json
import os
import pwd
import sys
from typing import Any

import click

from cigri.cli.client import CONTEXT, CliError, echo_json, run_command, version_option

BATCH_TYPES = ("oar2_5", "g5k", "oar3", "local", "slurm")
AUTH_TYPES = ("none", "password", "cert", "jwt")
ENGINES_HELP = ("Container engines the cluster's nodes offer, comma-separated (apptainer, singularity, podman, "
                "docker, charliecloud, bwrap); '' = none; 'any' = not declared (the default): campaigns asking "
                "for another engine there are refused at submission.")
BESTEFFORT_MODES = ("cancel", "requeue")
#: the cluster columns that say how a Slurm cluster is used (docs/slurm.md), with their options
SLURM_OPTIONS = ("normal_partition", "besteffort_partition", "besteffort_qos", "besteffort_mode", "jwt_key_file")


def _slurm_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--normal-partition", metavar="NAME", help="Slurm: partition of normal jobs (default: the "
                     "site's default partition)."),
        click.option("--besteffort-partition", metavar="NAME", help="Slurm: partition of best-effort jobs (a "
                     "preemptible one)."),
        click.option("--besteffort-qos", metavar="NAME", help="Slurm: QOS of best-effort jobs (a preemptible one)."),
        click.option("--besteffort-mode", type=click.Choice(BESTEFFORT_MODES), help="Slurm: what preemption does "
                     "to best-effort jobs there: cancel (they end PREEMPTED) or requeue (Slurm queues them again)."),
        click.option("--jwt-key-file", metavar="PATH", help="Slurm: the cluster's HS256 JWT key (a copy readable "
                     "by the CiGri server only); CiGri then signs its users' tokens itself. Without it users "
                     "register theirs with gridtoken."),
    ]):
        f = opt(f)
    return f


def _check_slurm(values: dict[str, Any]) -> None:
    """One clear message for a Slurm cluster row that could not work (or a Slurm option elsewhere)."""
    given = [k for k in SLURM_OPTIONS if values.get(k)]
    if values.get("batch") != "slurm":
        if given:
            raise CliError(f"--{given[0].replace('_', '-')} is for Slurm clusters (--batch slurm)")
        return
    if values.get("api_auth_type") not in ("jwt", "none"):
        raise CliError("A Slurm cluster authenticates with --auth jwt (tokens signed with --jwt-key-file, or "
                       "registered by users with gridtoken), or --auth none behind a proxy that authenticates")
    if (values.get("besteffort_partition") or values.get("besteffort_qos")) and not values.get("besteffort_mode"):
        raise CliError("Say what preemption does to best-effort jobs on this cluster: --besteffort-mode cancel "
                       "or requeue (scontrol show partition / sacctmgr show qos: PreemptMode)")
    if values.get("besteffort_mode") and not (values.get("besteffort_partition") or values.get("besteffort_qos")):
        raise CliError("--besteffort-mode needs --besteffort-partition or --besteffort-qos")
    key = values.get("jwt_key_file")
    if key and not os.access(key, os.R_OK):
        click.echo(f"Warning: {key} is not readable by this user; the CiGri daemons must be able to read it",
                   err=True)


def _engine() -> Any:
    from cigri.config import get_conf
    from cigri.db.engine import get_engine

    return get_engine(get_conf())


def _add_cluster(values: dict[str, Any]) -> int:
    from cigri.db.clusters import add_cluster
    from cigri.db.engine import transaction

    if values["batch"] not in BATCH_TYPES:
        raise CliError(f"\"{values['batch']}\" is not a valid batch system type. Valid types are: "
                       + ", ".join(BATCH_TYPES))
    if values.get("api_auth_type") not in AUTH_TYPES:
        raise CliError(f"\"{values.get('api_auth_type')}\" is not a valid auth type. Valid types are: "
                       + ", ".join(AUTH_TYPES))
    _check_slurm(values)
    with transaction(_engine()) as conn:
        return add_cluster(conn, **{k: v for k, v in values.items() if v is not None})


@click.group(context_settings=CONTEXT)
@version_option("cigri-admin")
def cli() -> None:
    """Administer the CiGri grid (clusters, API tokens). Needs access to the CiGri database."""


@cli.group()
def cluster() -> None:
    """Add, list, enable, disable or test clusters."""


@cluster.command("add")
@click.argument("name")
@click.argument("api_url")
@click.option("--batch", type=click.Choice(BATCH_TYPES), default="oar2_5", show_default=True)
@click.option("--auth", "auth_type", type=click.Choice(AUTH_TYPES), default="none", show_default=True)
@click.option("--username", help="api_username (auth password/cert).")
@click.option("--password", help="api_password (auth password).")
@click.option("--auth-header", help="Header carrying the user name (default X_REMOTE_IDENT).")
@click.option("--ssh-host", default="", help="Frontend host.")
@click.option("--resource-unit", default="resource_id", show_default=True)
@click.option("--power", type=int, default=None)
@click.option("--properties", default="", help="OAR properties selecting this logical cluster.")
@click.option("--disabled", is_flag=True, help="Add it disabled.")
@click.option("--container-engines", "engines", default=None, metavar="LIST", help=ENGINES_HELP)
@_slurm_options
def cluster_add(name: str, api_url: str, batch: str, auth_type: str, username: str | None, password: str | None,
                auth_header: str | None, ssh_host: str, resource_unit: str, power: int | None, properties: str,
                disabled: bool, engines: str | None, **slurm: str | None) -> None:
    """Add a cluster NAME reachable at API_URL (for a Slurm cluster: docs/slurm.md)."""
    cid = _add_cluster({"name": name, "api_url": api_url, "batch": batch, "api_auth_type": auth_type,
                        "api_username": username, "api_password": password, "api_auth_header": auth_header or None,
                        "ssh_host": ssh_host, "resource_unit": resource_unit, "power": power,
                        "properties": properties, "enabled": not disabled,
                        "container_engines": _engine_list(engines)} | slurm)
    click.echo(f"Cluster {name} added with id {cid}")


def _engine_list(text: str | None) -> str | None:
    """The stored form of --container-engines (None: not declared)."""
    from cigri.containers import parse_engine_list
    from cigri.errors import ParseError

    if text is None or text.strip().lower() == "any":
        return None
    try:
        return ",".join(parse_engine_list(text) or [])
    except ParseError as e:
        raise CliError(str(e)) from None


@cluster.command("set")
@click.argument("cluster", metavar="CLUSTER")
@click.option("--container-engines", "engines", default=None, metavar="LIST", help=ENGINES_HELP)
@_slurm_options
def cluster_set(cluster: str, engines: str | None, **slurm: str | None) -> None:
    """Change a cluster's settings, by name or id ('' clears a Slurm setting)."""
    from cigri.db.clusters import get_cluster, set_container_engines, set_slurm_options
    from cigri.db.engine import transaction
    from cigri.errors import NotFound

    changes = {k: v for k, v in slurm.items() if v is not None}
    if engines is None and not changes:
        raise CliError("Nothing to change: give --container-engines or a Slurm option (see --help)")
    value = _engine_list(engines) if engines is not None else None
    try:
        with transaction(_engine()) as conn:
            cid = _cluster_id(conn, cluster)
            if changes:
                info = get_cluster(conn, cluster_id=cid)
                _check_slurm({"batch": info.batch, "api_auth_type": info.api_auth_type}
                             | {k: getattr(info, k) for k in SLURM_OPTIONS} | changes)
                set_slurm_options(conn, cid, {k: v or None for k, v in changes.items()})
            if engines is not None:
                set_container_engines(conn, cid, value)
    except NotFound as e:
        raise CliError(str(e)) from None
    if engines is not None:
        click.echo(f"Cluster {cluster}: container engines " + ("not declared (any)" if value is None else
                                                               repr(value) if value else "none"))
    for k, v in changes.items():
        click.echo(f"Cluster {cluster}: {k} " + (repr(v) if v else "cleared"))


@cluster.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def cluster_list(as_json: bool) -> None:
    """All clusters, enabled or not."""
    from cigri.db.clusters import list_clusters

    with _engine().connect() as conn:
        cls = list_clusters(conn, enabled_only=False)
    if as_json:
        echo_json([{k: v for k, v in c.__dict__.items() if k not in ("api_password",)} for c in cls])
        return
    for c in cls:
        click.echo(f"{c.id}: {c.name} {c.batch} {c.api_url} auth={c.api_auth_type}"
                   + ("" if c.container_engines is None else f" containers={c.container_engines or 'none'}")
                   + "".join(f" {k}={getattr(c, k)}" for k in SLURM_OPTIONS[:4] if getattr(c, k))
                   + (" jwt=signed" if c.jwt_key_file else "")
                   + ("" if c.enabled else " (disabled)"))


def _cluster_id(conn: Any, cluster: str) -> int:
    """`cluster` is an id or a name (`cluster add` takes a name, `cluster list` shows both)."""
    from cigri.db.clusters import cluster_ids_by_name
    from cigri.errors import NotFound

    if cluster.isdigit():
        return int(cluster)
    ids = cluster_ids_by_name(conn, [cluster])
    if cluster not in ids:
        raise NotFound(f"Cluster {cluster} not found")
    return ids[cluster]


def _set_enabled(cluster: str, enabled: bool) -> None:
    from cigri.db.clusters import set_enabled
    from cigri.db.engine import transaction
    from cigri.errors import NotFound

    try:
        with transaction(_engine()) as conn:
            set_enabled(conn, _cluster_id(conn, cluster), enabled)
    except NotFound as e:
        raise CliError(str(e)) from None
    click.echo(f"Cluster {cluster} {'enabled' if enabled else 'disabled'}")


@cluster.command("enable")
@click.argument("cluster", metavar="CLUSTER")
def cluster_enable(cluster: str) -> None:
    """Enable a cluster, by name or id (its runner starts at the next almighty cycle)."""
    _set_enabled(cluster, True)


@cluster.command("disable")
@click.argument("cluster", metavar="CLUSTER")
def cluster_disable(cluster: str) -> None:
    """Disable a cluster, by name or id (its runner stops)."""
    _set_enabled(cluster, False)


@cluster.command("test")
@click.argument("cluster_name")
@click.option("-u", "--user", required=True, help="Grid login to submit as.")
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False), help="Job description (JSON or Ruby hash).")
def cluster_test(cluster_name: str, user: str, path: str | None) -> None:
    """Submit a test job on a cluster as USER and print its id and state."""
    _test_submit(cluster_name, path, user)


@cli.command("api-token")
@click.argument("user", required=False)
@click.option("--lifetime", type=int, default=None, help="Seconds (at most, and by default, API_JWT_LIFETIME).")
@click.option("--revoke", metavar="JTI", help="Revoke the token with this id (its `jti` claim) instead.")
def api_token(user: str | None, lifetime: int | None, revoke: str | None) -> None:
    """Print a CiGri API bearer token for USER (reads the JWT secret: run as root or cigri),
    or revoke one by its id."""
    import time

    from cigri.api.auth import Authenticator, AuthError
    from cigri.config import get_conf
    from cigri.db.engine import get_engine

    conf = get_conf()
    auth = Authenticator(conf, get_engine(conf))
    if revoke:
        auth.revoke({"jti": revoke, "sub": user, "exp": int(time.time()) + auth.lifetime})
        click.echo(f"Token {revoke} revoked")
        return
    if not user:
        raise CliError("Give the USER to issue a token for (or --revoke JTI)")
    try:
        token, _ = auth.issue(user, lifetime)
    except AuthError as e:
        raise CliError(e.message) from None
    click.echo(token)


def _read_job_description(path: str | None) -> dict[str, Any]:
    if not path:
        return {"resources": "resource_id=1,walltime=300", "command": "sleep 30"}
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 - tiny file
    except OSError as e:
        raise CliError(f"Cannot read {path}: {e.strerror}") from None
    try:
        d = json.loads(text)
    except ValueError:
        try:  # CiGri3 files are Ruby hashes: {"a"=>"b"}
            d = ast.literal_eval(text.replace("=>", ":"))
        except (ValueError, SyntaxError):
            raise CliError(f"{path}: not a JSON object nor a Ruby hash") from None
    if not isinstance(d, dict) or "command" not in d:
        raise CliError(f"{path}: the job description needs at least a \"command\"")
    return d


def _test_submit(cluster_name: str, path: str | None, user: str) -> None:
    from cigri.clusters import get_adapter
    from cigri.clusters.base import ClusterAPIError, JobRequest
    from cigri.config import get_conf
    from cigri.db.clusters import get_cluster, user_mapping
    from cigri.errors import NotFound

    d = _read_job_description(path)
    try:
        with _engine().connect() as conn:
            info = get_cluster(conn, name=cluster_name)
            mapping = user_mapping(conn, info.id)
    except NotFound as e:
        raise CliError(str(e)) from None
    res = str(d.get("resources") or "resource_id=1")
    walltime = None
    if "walltime=" in res:
        res, _, walltime = res.partition(",walltime=")
    req = JobRequest(command=str(d["command"]), resources=res if res.startswith("/") else "/" + res,
                     walltime=walltime, property=d.get("property") or None, project=d.get("project") or None,
                     directory=d.get("directory"))
    adapter = get_adapter(info, get_conf(), mapping)
    try:
        ids = adapter.submit(req, user)
        click.echo(f"Id: {ids[0]}")
        click.echo(f"State: {adapter.get_job(ids[0], user).raw_state}")
    except ClusterAPIError as e:
        raise CliError(f"Submission failed on {cluster_name}: {e.message}") from None
    finally:
        adapter.close()


# --------------------------------------------------------------------------- CiGri3 scripts
@click.command(context_settings=CONTEXT, epilog="Example: newcluster tchernobyl https://frontend/oarapi-secured/ "
               "cert kameleon kameleon '' tchernobyl oar2_5 core 100 \"cluster='tchernobyl'\"")
@click.argument("args", nargs=-1)
def newcluster(args: tuple[str, ...]) -> int:
    """newcluster <name> <api_url> <api_auth_type> <api_username> <api_password> <api_auth_header>
    <ssh_host> <batch> <resource_unit> <power> <properties>"""
    if len(args) != 11:
        raise click.UsageError(f"exactly 11 arguments expected, got {len(args)}")
    name, url, auth, username, password, header, ssh, batch, unit, power, props = args
    try:
        pw = int(power) if power else None
    except ValueError:
        raise CliError(f"power must be an integer, got {power!r}") from None
    cid = _add_cluster({"name": name, "api_url": url, "api_auth_type": auth, "api_username": username or None,
                        "api_password": password or None, "api_auth_header": header or None, "ssh_host": ssh,
                        "batch": batch, "resource_unit": unit, "power": pw, "properties": props})
    click.echo(f"Cluster {name} added with id {cid}")
    return 0


@click.command(context_settings=CONTEXT)
@click.option("-c", "--cluster", "cluster_name", required=True, help="Cluster name.")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="Job description file.")
@click.option("-u", "--user", required=True, help="Grid login to submit as.")
def grid_test_cluster(cluster_name: str, path: str, user: str) -> int:
    """Submit a test job on a cluster through CiGri's cluster library (as user cigri or root)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me not in ("cigri", "root"):
        raise CliError("grid_test_cluster must be run as user cigri or root")
    _test_submit(cluster_name, path, user)
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))


def newcluster_main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(newcluster, argv))


def test_cluster_main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(grid_test_cluster, argv))
