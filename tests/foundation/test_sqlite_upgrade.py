"""A SQLite database made by an older CiGri-py (local mode's, on a user's machine) gets the
columns and tables added since as soon as a CiGri process opens it: `cigri local run`,
`cigri local status` or `summary`, the API started on demand, the engine."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from cigri.cli.local import main as cigri_main
from cigri.config import Conf
from cigri.db import schema
from cigri.db.admin import check_schema, sql_dir
from cigri.db.engine import make_engine
from cigri.db.jobs import change_state
from cigri.states import JobState

#: what CiGri-py added to the SQLite layout after local mode's first databases
ADDED_COLUMNS = [("jobs", "kill_cause"), ("clusters", "container_engines"), ("clusters", "normal_partition"),
                 ("clusters", "besteffort_partition"), ("clusters", "besteffort_qos"),
                 ("clusters", "besteffort_mode"), ("clusters", "jwt_key_file")]


def old_database(path: Path, drop: list[tuple[str, str]], drop_tables: tuple[str, ...] = ()) -> None:
    """Today's layout without some columns and tables, with a campaign whose task is running."""
    with sqlite3.connect(path) as db:
        db.executescript((sql_dir() / "cigri3-sqlite.sql").read_text())
        for t, c in drop:
            db.execute(f'ALTER TABLE "{t}" DROP COLUMN "{c}"')
        for t in drop_tables:
            db.execute(f'DROP TABLE "{t}"')
        db.execute("INSERT INTO clusters (name, api_url, batch) VALUES ('local', 'local://', 'local')")
        db.execute("INSERT INTO campaigns (grid_user, state, type, name, nb_jobs, jdl) "
                   "VALUES ('alice', 'in_treatment', 'best-effort', 'old one', 1, '{}')")
        db.execute("INSERT INTO parameters (campaign_id, name, param) VALUES (1, 'a', 'a 1')")
        db.execute("INSERT INTO jobs (campaign_id, param_id, cluster_id, state, remote_id) "
                   "VALUES (1, (SELECT id FROM parameters WHERE name = 'a'), 1, 'running', 42)")
    db.close()


def conf_for(path: Path) -> Conf:
    return Conf(values={"DATABASE_TYPE": "SQLite", "DATABASE_PATH": str(path)})


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        cols = {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}
    db.close()
    return cols


def test_a_job_of_an_older_database_can_be_recorded_as_preempted(tmp_path: Path) -> None:
    """The runner records a best-effort kill in jobs.kill_cause: on a database made before that
    column existed, opening it is enough."""
    path = tmp_path / "cigri.sqlite"
    old_database(path, ADDED_COLUMNS, drop_tables=("api_revoked_tokens",))
    assert "kill_cause" not in columns(path, "jobs")
    eng = make_engine(conf_for(path))
    assert check_schema(eng)[0] == []
    with eng.begin() as c:
        assert change_state(c, 1, JobState.RUNNING, JobState.EVENT, kill_cause="preempted") == [1]
    with eng.connect() as c:
        assert c.execute(sa.select(schema.jobs.c.state, schema.jobs.c.kill_cause, schema.jobs.c.remote_id)).all() \
            == [("event", "preempted", 42)]
        assert c.execute(sa.select(schema.clusters.c.name, schema.clusters.c.container_engines)).all() == \
            [("local", None)]
    eng.dispose()
    eng = make_engine(conf_for(path))  # the next process finds nothing to do
    assert check_schema(eng)[0] == []
    eng.dispose()


def test_cigri_local_status_on_an_older_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cigri.sqlite"
    old_database(path, ADDED_COLUMNS)
    conf = tmp_path / "cigri.conf"
    conf.write_text(f'DATABASE_TYPE = "SQLite"\nDATABASE_PATH = "{path}"\n')
    assert cigri_main(["local", "status", "--conf", str(conf)]) == 0
    assert "old one" in capsys.readouterr().out
    assert {"kill_cause"} <= columns(path, "jobs")
    assert {c for t, c in ADDED_COLUMNS if t == "clusters"} <= columns(path, "clusters")


def test_every_nullable_column_is_added_back(tmp_path: Path) -> None:
    """Whatever column a future version adds (NULL-able or with a default), an older database
    gets it: each column that SQLite can drop is dropped from a database in turn."""
    with sqlite3.connect(":memory:") as mem:
        mem.executescript((sql_dir() / "cigri3-sqlite.sql").read_text())
        tables = [r[0] for r in mem.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT LIKE 'sqlite_%'")]
        droppable = []
        for t in tables:
            for _cid, c, _typ, notnull, dflt, pk in mem.execute(f'PRAGMA table_info("{t}")'):
                indexed = any(c in (r[0] or "") for r in mem.execute(
                    "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name = ?", (t,)))
                if not pk and not indexed and (not notnull or dflt is not None):
                    droppable.append((t, c))
    assert ("jobs", "kill_cause") in droppable and len(droppable) > 40
    lost = []
    for n, (t, c) in enumerate(droppable):
        path = tmp_path / f"{n}.sqlite"
        try:
            old_database(path, [(t, c)])
        except sqlite3.OperationalError:  # a constraint or the sample rows need it
            continue
        eng = make_engine(conf_for(path))
        if c not in columns(path, t) or check_schema(eng)[0]:
            lost.append(f"{t}.{c}")
        eng.dispose()
    assert lost == []
