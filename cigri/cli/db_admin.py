"""`cigri-db init | check | upgrade`: create, check and upgrade a CiGri database.

The connection comes from cigri.conf (CIGRICONFFILE, usual lookup) unless
--database-url is given. Exit status: 0 ok, 1 differences/failure, 2 unreachable DB."""

from __future__ import annotations

import sys

import click
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.config import Conf, get_conf, set_conf
from cigri.db import admin
from cigri.db.engine import database_url, make_engine
from cigri.errors import CigriError


def _engine(database_url_opt: str | None, conf_file: str | None) -> tuple[Engine, str]:
    try:
        conf = Conf(conf_file) if conf_file else get_conf()
    except CigriError as e:
        raise click.ClickException(str(e)) from None
    set_conf(conf)
    url = sa.make_url(database_url_opt) if database_url_opt else database_url(conf)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    shown = url.render_as_string(hide_password=True)
    return make_engine(conf, url=url), shown


def _reachable(engine: Engine, shown: str) -> None:
    try:
        admin.ping(engine)
    except sa.exc.SQLAlchemyError as e:
        first = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        click.echo(f"cigri-db: cannot connect to the database {shown}: {first}", err=True)
        sys.exit(2)


_url_opt = click.option("--database-url", "database_url_opt", metavar="URL",
                        help="SQLAlchemy URL (e.g. postgresql://cigri3:pw@host/cigri3); default: cigri.conf")
_conf_opt = click.option("--conf", "conf_file", metavar="FILE", help="cigri.conf to use (default: CIGRICONFFILE...)")
_grant_opt = click.option("--grant-to", "grant_role", metavar="ROLE",
                          help="PostgreSQL: give ROLE (the DATABASE_USER_NAME of the daemons) DML rights on every "
                               "table and sequence, when the schema is owned by another role (CiGri3 sites: "
                               "postgres). upgrade also does it for the roles that could already write the tables")


@click.group(help=__doc__)
def main() -> None:
    pass


@main.command(help="Create the CiGri schema (tables, enums, indexes, null parameter, seeded rule).")
@_url_opt
@_conf_opt
@click.option("--create-database", is_flag=True, help="PostgreSQL: create the database first (needs CREATEDB)")
@_grant_opt
def init(database_url_opt: str | None, conf_file: str | None, create_database: bool, grant_role: str | None) -> None:
    engine, shown = _engine(database_url_opt, conf_file)
    if create_database and engine.dialect.name == "postgresql":
        name = engine.url.database
        adm = make_engine(url=engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        _reachable(adm, shown)
        if admin.create_database(adm, name or ""):
            click.echo(f"created database {name}")
        adm.dispose()
    _reachable(engine, shown)
    if admin.is_initialised(engine):
        click.echo(f"cigri-db: {shown} already has a CiGri schema; use 'cigri-db check' or 'cigri-db upgrade'",
                   err=True)
        sys.exit(1)
    admin.init_schema(engine)
    click.echo(f"CiGri schema created in {shown}")
    if grant_role:
        admin.grant_to(engine, grant_role)
        click.echo(f"rights granted to {grant_role}")


@main.command(help="Compare the database with the expected schema; exit 1 on any difference.")
@_url_opt
@_conf_opt
def check(database_url_opt: str | None, conf_file: str | None) -> None:
    engine, shown = _engine(database_url_opt, conf_file)
    _reachable(engine, shown)
    if not admin.is_initialised(engine):
        click.echo(f"{shown}: no CiGri schema (use 'cigri-db init')")
        sys.exit(1)
    diffs, notes = admin.check_schema(engine)
    for n in notes:
        click.echo(f"note: {n}")
    for d in diffs:
        click.echo(f"DIFF: {d}")
    if diffs:
        click.echo(f"{len(diffs)} difference(s); 'cigri-db upgrade' fixes the additive ones")
        sys.exit(1)
    click.echo(f"{shown}: schema OK")


@main.command(help="Upgrade a CiGri3 (or older CiGri) database in place; additive and idempotent. Run it as the "
                   "owner of the schema (CiGri3 sites: sudo -u postgres cigri-db upgrade --grant-to cigri "
                   "--database-url postgresql:///cigri3).")
@_url_opt
@_conf_opt
@_grant_opt
def upgrade(database_url_opt: str | None, conf_file: str | None, grant_role: str | None) -> None:
    engine, shown = _engine(database_url_opt, conf_file)
    _reachable(engine, shown)
    try:
        rep = admin.upgrade_schema(engine)
        if grant_role:
            admin.grant_to(engine, grant_role)
            rep.actions.append(f"rights granted to {grant_role}")
    except admin.NotOwner as e:
        click.echo(f"cigri-db upgrade: nothing changed: {e}", err=True)
        sys.exit(1)
    except (RuntimeError, sa.exc.SQLAlchemyError, psycopg.Error) as e:
        first = (str(getattr(e, "orig", e)).strip().splitlines() or [type(e).__name__])[0]
        click.echo(f"cigri-db upgrade failed: {first}", err=True)
        sys.exit(1)
    for a in rep.actions:
        click.echo(a)
    for w in rep.warnings:
        click.echo(f"WARNING: {w}")
    diffs, _ = admin.check_schema(engine)
    for d in diffs:
        click.echo(f"DIFF: {d}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
