"""`cigri-db init | check | upgrade`, including the upgrade of a CiGri 3.0-era database."""

import json
import os
import re
import subprocess
import sys

import pytest
import sqlalchemy as sa

from cigri import admission
from cigri import campaigns as C
from cigri.db import admin
from tests.conftest import PG_BASE, _admin_engine

CLI = [sys.executable, "-m", "cigri.cli.db_admin"]


def run_cli(*args, env=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300,
                          env=(os.environ | (env or {})))


def test_fresh_schema_checks_clean(engine):
    diffs, _notes = admin.check_schema(engine)
    assert diffs == []


def test_check_reports_differences(sqlite_engine):
    with sqlite_engine.begin() as c:
        c.execute(sa.text("INSERT INTO bag_of_tasks (campaign_id, param_id) VALUES (77, 1)"))
        c.execute(sa.text("DROP INDEX bag_of_tasks_idx_sched"))
        c.execute(sa.text("DELETE FROM parameters WHERE id = 0"))
    diffs, notes = admin.check_schema(sqlite_engine)
    assert any("missing index bag_of_tasks_idx_sched" in d for d in diffs)
    assert any("null parameter" in d for d in diffs)
    assert any("1 bag_of_tasks rows belong to no campaign" in n for n in notes)
    url = sqlite_engine.url.render_as_string()
    out = run_cli("check", "--database-url", url)
    assert out.returncode == 1 and "DIFF: missing index bag_of_tasks_idx_sched" in out.stdout
    out = run_cli("upgrade", "--database-url", url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert run_cli("check", "--database-url", url).returncode == 0


def test_cli_init_sqlite_and_refuse_twice(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    out = run_cli("init", "--database-url", url)
    assert out.returncode == 0 and "schema created" in out.stdout
    out = run_cli("init", "--database-url", url)
    assert out.returncode == 1 and "already has a CiGri schema" in out.stderr
    assert "schema OK" in run_cli("check", "--database-url", url).stdout


def test_cli_unreachable_database():
    out = run_cli("check", "--database-url", "postgresql://cigri:cigri@127.0.0.1:1/nowhere")
    assert out.returncode == 2
    assert "cannot connect to the database" in out.stderr and "Traceback" not in out.stderr
    assert "cigri:***@" in out.stderr  # password hidden


def test_cli_uses_cigri_conf(tmp_path):
    conf = tmp_path / "cigri.conf"
    conf.write_text(f'DATABASE_TYPE = "SQLite"\nDATABASE_PATH = "{tmp_path}/viaconf.sqlite"\n')
    out = run_cli("init", env={"CIGRICONFFILE": str(conf)})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "viaconf.sqlite").exists()
    bad = tmp_path / "bad.conf"
    bad.write_text("NOPE = 1\n")
    out = run_cli("check", env={"CIGRICONFFILE": str(bad)})
    assert out.returncode != 0 and "bad.conf:1: unknown variable NOPE" in out.stderr


RUBY_SEED = '''# Title : Filtering users for normal mode on clusters
user_lists=JSON.parse(File.read("/etc/cigri/user_lists"))
jdl["clusters"].each do |cluster|
  if cluster[1]["type"] != "best-effort" and not user_lists["normal_authorized"][cluster[0]].include?(user)
    raise Cigri::AdmissionRuleError.new("You are not authorized to launch non best-effort jobs on #{cluster[0]}!")
  end
end'''
RUBY_OTHER = '''if jdl["clusters"].length > 3
  raise Cigri::AdmissionRuleError.new("too many clusters")
end'''


def cigri30_sql():
    """sql/cigri3.sql as a CiGri 3.0 database had it."""
    s = (admin.sql_dir() / "cigri3.sql").read_text()
    s = s.replace("  api_limit INTEGER NOT NULL DEFAULT 100,\n", "")
    s = s.replace("  cluster_id INTEGER,\n  PRIMARY KEY (grid_login, cluster_id)",
                  "  cluster_id INTEGER,\n  PRIMARY KEY (grid_login)")
    s = s.replace(", 'batch_waiting');", ");")
    s = re.sub(r"CREATE TYPE tap_state.*?CREATE INDEX taps_idx_id ON taps \(id\);", "", s, flags=re.S)
    s = s.replace("CREATE INDEX jobs_idx_tag ON jobs (tag);", "")
    s = s[:s.index("-- The seeded admission rule")]
    return s


@pytest.fixture
def cigri30_db():
    name = f"cigri_test_upgrade_{os.getpid()}"
    adm = _admin_engine()
    with adm.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng = sa.create_engine(f"{PG_BASE}/{name}")
    admin.run_sql_script(eng, cigri30_sql())
    with eng.begin() as c:
        c.execute(sa.text("INSERT INTO admission_rules (code) VALUES (:a), (:b)"), {"a": RUBY_SEED, "b": RUBY_OTHER})
        c.execute(sa.text("INSERT INTO clusters (name, api_url, batch) VALUES ('dahu', 'http://x/', 'oar2_5')"))
        c.execute(sa.text("INSERT INTO users_mapping (grid_login, cluster_login, cluster_id) VALUES ('bob', 'b', 1)"))
        jdl = {"name": "old", "params": ["a", "b"], "clusters": {"dahu": {"exec_file": "e"}}}
        c.execute(sa.text("INSERT INTO campaigns (grid_user, state, type, name, nb_jobs, jdl) "
                          "VALUES ('bob', 'terminated', 'normal', 'old', 2, :j)"), {"j": json.dumps(jdl)})
        c.execute(sa.text("INSERT INTO parameters (campaign_id, name, param) VALUES (1, 'a', 'a'), (1, 'b', 'b')"))
        c.execute(sa.text("INSERT INTO jobs (campaign_id, param_id, state, cluster_id) "
                          "VALUES (1, 1, 'terminated', 1), (1, 2, 'terminated', 1)"))
        c.execute(sa.text("INSERT INTO events (class, code, state, campaign_id) "
                          "VALUES ('campaign', 'PAUSED', 'closed', 1)"))
    yield eng, f"{PG_BASE}/{name}"
    eng.dispose()
    with adm.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    adm.dispose()


def table_counts(eng):
    with eng.connect() as c:
        tables = [r[0] for r in c.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
        return {t: c.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}


def test_upgrade_cigri30_database(cigri30_db, pg_conf):
    eng, url = cigri30_db
    diffs, _ = admin.check_schema(eng)
    joined = "\n".join(diffs)
    for expected in ("missing column clusters.api_limit", "missing table taps", "enum job_state lacks labels "
                     "batch_waiting", "users_mapping has primary key ['grid_login']", "missing index jobs_idx_tag",
                     "admission rule 1 is not Python", "null parameter"):
        assert expected in joined
    before = table_counts(eng)

    out = run_cli("upgrade", "--grant-to", "cigri", "--database-url", url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "admission rule 2 is Ruby: disabled" in out.stdout and "rights granted to cigri" in out.stdout
    assert "users_mapping primary key is now (grid_login, cluster_id)" in out.stdout

    after = table_counts(eng)
    for t, n in before.items():
        expected_n = n + (1 if t == "parameters" else 0)  # + the null parameter
        assert after[t] == expected_n, t
    assert admin.check_schema(eng)[0] == []
    with eng.connect() as c:
        rules = dict(c.execute(sa.text("SELECT id, code FROM admission_rules")).all())
        assert c.execute(sa.text("SELECT api_limit FROM clusters")).scalar_one() == 100
    assert rules[1] == admission.SEED_RULE_1
    assert rules[2].startswith(admission.DISABLED_MARK) and "too many clusters" in rules[2]

    # idempotent
    out = run_cli("upgrade", "--database-url", url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert table_counts(eng) == after

    # the upgraded database works: tasks added to the old campaign, a new campaign submitted
    assert C.add_tasks(eng, 1, ["c"], "bob") == 1
    with eng.connect() as c:
        row = c.execute(sa.text("SELECT state, nb_jobs, jdl FROM campaigns WHERE id = 1")).one()
    assert row[0] == "in_treatment" and row[1] == 3
    assert json.loads(row[2])["params"] == ["a", "b"]  # CiGri3 inline params untouched
    cid = C.submit_campaign(eng, {"name": "new", "nb_jobs": 3, "exec_file": "e", "clusters": {"dahu": {}}}, "bob")
    assert cid == 2


def test_cli_init_create_database_pg():
    name = f"cigri_test_create_{os.getpid()}"
    url = f"{PG_BASE}/{name}"
    try:
        out = run_cli("init", "--create-database", "--grant-to", "cigri", "--database-url", url)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"created database {name}" in out.stdout and "rights granted to cigri" in out.stdout
        out = run_cli("check", "--database-url", url)
        assert out.returncode == 0 and "schema OK" in out.stdout, out.stdout + out.stderr
    finally:
        with _admin_engine().connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
