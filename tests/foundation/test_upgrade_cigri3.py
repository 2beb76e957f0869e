"""`cigri-db upgrade` of real CiGri3 sites (issue #11 items 7, 8, 11).

The site is built the way CiGri3 builds it: its structure script
(tests/fixtures/cigri3/psql_structure.sql, written from CiGri3's specification) loaded by
the role that owns the database (postgres on a real site, a scratch role here), and the
daemons' role granted only SELECT/INSERT/UPDATE/DELETE on the tables and SELECT/UPDATE
on the sequences, as CiGri3's init_db.rb does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri import admission
from cigri import campaigns as C
from cigri.db import admin
from cigri.errors import AdmissionRuleError
from tests import parts
from tests.conftest import PG_BASE, POSTGRES, _admin_engine

STRUCTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cigri3" / "psql_structure.sql"
PW = "site-pw"


def _probe_createrole() -> str | None:
    with _admin_engine().connect() as c:
        if not c.execute(sa.text("SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user")).scalar_one():
            return "the test role cannot create roles (tools/pg-setup grants CREATEROLE)"
    return None


CREATEROLE = parts.Part("PostgreSQL CREATEROLE", "CIGRI_POSTGRES", _probe_createrole, hint="sudo tools/pg-setup")
pytestmark = parts.requires_part(POSTGRES, CREATEROLE)


def structure(version: str) -> str:
    sql = STRUCTURE.read_text()
    if version == "3.1":  # no api_limit yet, and bulk job polling off by default
        sql = sql.replace("  api_chunk_size integer NOT NULL DEFAULT 100,\n  api_limit integer NOT NULL DEFAULT 100,\n",
                          "  api_chunk_size integer NOT NULL DEFAULT 0,\n")
        assert "api_limit" not in sql
    return sql


@dataclass
class Site:
    db: str
    owner: str
    daemon: str
    engines: dict[str, Engine] = field(default_factory=dict)

    def url(self, role: str) -> str:
        u = sa.make_url(PG_BASE)
        return u.set(username=role, password=PW, database=self.db).render_as_string(hide_password=False)

    def engine(self, role: str) -> Engine:
        if role not in self.engines:
            self.engines[role] = sa.create_engine(self.url(role))
        return self.engines[role]

    def cli(self, role: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cigri.cli.db_admin", *args, "--database-url", self.url(role)],
                              capture_output=True, text=True, timeout=300)


def make_site(version: str) -> Iterator[Site]:
    pid = os.getpid()
    site = Site(f"cigri3_site_{pid}", f"c3owner_{pid}", f"c3daemon_{pid}")
    adm = _admin_engine()
    owner_server = sa.create_engine(sa.make_url(site.url(site.owner)).set(database="postgres"),
                                    isolation_level="AUTOCOMMIT")

    def cleanup() -> None:
        """Also after a failed test that left connections open: the test role joins both roles
        (CREATEROLE allows it), which lets it end their sessions and drop their database."""
        for e in site.engines.values():
            e.dispose()
        with adm.connect() as c:
            for role in (site.owner, site.daemon):
                if c.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                    c.execute(sa.text(f'GRANT "{role}" TO CURRENT_USER'))
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{site.db}" WITH (FORCE)'))
            for role in (site.daemon, site.owner):
                c.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))

    cleanup()
    with adm.connect() as c:
        c.execute(sa.text(f"CREATE ROLE \"{site.owner}\" LOGIN CREATEDB PASSWORD '{PW}'"))
        c.execute(sa.text(f"CREATE ROLE \"{site.daemon}\" LOGIN PASSWORD '{PW}'"))
    with owner_server.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE \"{site.db}\" ENCODING 'UTF8' TEMPLATE template0"))
    eng = site.engine(site.owner)
    admin.run_sql_script(eng, structure(version))
    with eng.begin() as c:  # init_db.rb's grants
        c.execute(sa.text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{site.daemon}"'))
        c.execute(sa.text(f'GRANT SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "{site.daemon}"'))
        c.execute(sa.text("INSERT INTO clusters (name, api_url, batch) VALUES ('dahu', 'http://dahu/oarapi/', "
                          "'oar2_5')"))
    try:
        yield site
    finally:
        owner_server.dispose()
        cleanup()
        adm.dispose()


@pytest.fixture
def site32() -> Iterator[Site]:
    yield from make_site("3.2")


@pytest.fixture
def site31() -> Iterator[Site]:
    yield from make_site("3.1")


ADMIN_RULE = '''# site rule: eve may not submit
if user == "eve":
    reject("eve is banned")
'''
ADMIN_RUBY_RULE = '''if jdl["clusters"].length > 3
  raise Cigri::AdmissionRuleError.new("too many clusters")
end'''


def rules(eng: Engine) -> list[tuple[int, str]]:
    with eng.connect() as c:
        return [(int(i), code) for i, code in c.execute(sa.text("SELECT id, code FROM admission_rules ORDER BY id"))]


def test_upgrade_keeps_every_admission_rule(site32: Site, pg_conf: object) -> None:
    """CiGri3's rule 1 and the admin's first rule both have id 1: each survives, once, with its own id."""
    owner = site32.engine(site32.owner)
    with owner.begin() as c:  # what an admin of a CiGri3 site does
        c.execute(sa.text("INSERT INTO admission_rules (code) VALUES (:a)"), {"a": ADMIN_RULE})
        c.execute(sa.text("INSERT INTO admission_rules (code) VALUES (:a)"), {"a": ADMIN_RUBY_RULE})
    assert [i for i, _ in rules(owner)] == [1, 1, 2]
    out = site32.cli(site32.owner, "check")
    assert out.returncode == 1 and "2 admission rules share the id 1" in out.stdout, out.stdout

    out = site32.cli(site32.owner, "upgrade", "--grant-to", site32.daemon)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "a second rule with id 1 is now rule 3 (both kept)" in out.stdout
    after = rules(owner)
    assert after == [(1, admission.SEED_RULE_1), (2, after[1][1]), (3, ADMIN_RULE)]
    assert after[1][1].startswith(admission.DISABLED_MARK) and "too many clusters" in after[1][1]
    assert site32.cli(site32.owner, "check").returncode == 0
    assert site32.cli(site32.owner, "upgrade").returncode == 0 and rules(owner) == after  # idempotent

    daemon = site32.engine(site32.daemon)
    with daemon.begin() as c:  # the next rule gets a fresh id
        new = c.execute(sa.text("INSERT INTO admission_rules (code) VALUES ('pass') RETURNING id")).scalar_one()
    assert new == 4
    # both rules act at submission, through the daemons' role
    best_effort = {"name": "n", "nb_jobs": 2, "exec_file": "e", "clusters": {"dahu": {"type": "best-effort"}}}
    normal = best_effort | {"clusters": {"dahu": {"type": "normal"}}}
    with pytest.raises(AdmissionRuleError, match="rule 3 failed: eve is banned"):
        C.submit_campaign(daemon, best_effort, "eve")
    with pytest.raises(AdmissionRuleError, match="rule 1 failed: You are not authorized to launch non best-effort"):
        C.submit_campaign(daemon, normal, "zoe_not_listed")
    assert C.submit_campaign(daemon, best_effort, "zoe_not_listed") >= 1


def test_upgrade_as_the_daemons_role_says_who_must_run_it(site32: Site) -> None:
    before = site32.cli(site32.daemon, "check")
    assert before.returncode == 1 and "missing sequence batch_id_seq" in before.stdout, before.stdout + before.stderr
    out = site32.cli(site32.daemon, "upgrade")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"belongs to {site32.owner}" in out.stderr and f"role {site32.daemon} (this connection)" in out.stderr
    assert f"cigri-db upgrade --grant-to {site32.daemon} --database-url postgresql:///{site32.db}" in out.stderr
    assert site32.cli(site32.daemon, "check").stdout == before.stdout  # nothing changed


def test_upgrade_without_grant_to_keeps_the_daemons_working(site32: Site) -> None:
    """The daemons' role gets rights on what the upgrade adds, and `check` run by it tells the truth."""
    out = site32.cli(site32.owner, "upgrade")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"granted to {site32.daemon} (it could already write the CiGri tables)" in out.stdout
    daemon = site32.engine(site32.daemon)
    with daemon.begin() as c:
        assert c.execute(sa.text("SELECT nextval('batch_id_seq')")).scalar_one() >= 1
    check = site32.cli(site32.daemon, "check")
    assert check.returncode == 0 and "schema OK" in check.stdout, check.stdout + check.stderr

    with site32.engine(site32.owner).begin() as c:
        c.execute(sa.text(f'REVOKE ALL ON SEQUENCE batch_id_seq FROM "{site32.daemon}"'))
    check = site32.cli(site32.daemon, "check")
    assert check.returncode == 1
    assert (f"DIFF: role {site32.daemon} lacks rights on sequence batch_id_seq (the daemons connecting as "
            f"{site32.daemon} would fail with 'permission denied'): run 'cigri-db upgrade --grant-to "
            f"{site32.daemon}'") in check.stdout, check.stdout


def test_upgrade_of_a_31_database_fixes_column_defaults(site31: Site) -> None:
    out = site31.cli(site31.owner, "check")
    assert out.returncode == 1
    assert "DIFF: column clusters.api_chunk_size has default 0, expected default 100" in out.stdout, out.stdout
    assert "missing column clusters.api_limit" in out.stdout
    out = site31.cli(site31.owner, "upgrade")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "column clusters.api_chunk_size: default 0 -> 100" in out.stdout
    assert site31.cli(site31.daemon, "check").returncode == 0
    with site31.engine(site31.daemon).begin() as c:
        c.execute(sa.text("INSERT INTO clusters (name, api_url, batch) VALUES ('new', 'http://new/', 'oar2_5')"))
        got: dict[str, int] = dict(c.execute(sa.text("SELECT name, api_chunk_size FROM clusters")).all())
    assert got == {"dahu": 0, "new": 100}  # the existing row keeps its setting; the default is 3.2's
