"""The rules the code keeps, checked on every run (issue #12's grep-level checks; the
checks themselves are in tests/meta/layers.py). Each is also run on a sample that breaks
it: a check that finds nothing there would pass whatever the code does."""

from __future__ import annotations

import textwrap

import pytest

from tests.meta.layers import job_state_write_findings, oar_word_findings, sources, sql_findings


def _all(check) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(f) for path, text in sources() for f in check(path, text)]


def test_no_sql_outside_the_data_layer() -> None:
    """No table import, no SQLAlchemy statement, no driver, no `.execute(` outside cigri/db/."""
    assert _all(sql_findings) == []


def test_no_oar_state_word_outside_the_oar_adapters() -> None:
    assert _all(oar_word_findings) == []


def test_every_job_state_write_goes_through_change_state() -> None:
    assert _all(job_state_write_findings) == []


BAD_SQL = textwrap.dedent('''\
    """A module that does everything the data layer forbids."""
    import sqlite3
    import sqlalchemy as sa
    from sqlalchemy import select, exc
    from sqlalchemy.engine import Connection
    from sqlalchemy.dialects.postgresql import ARRAY
    from cigri.db.schema import jobs
    from cigri.db import schema
    from ..db import schema as s2
    import cigri.db.schema
    import psycopg

    def f(conn: Connection) -> None:
        conn.execute(sa.select(jobs))
        conn.exec_driver_sql("PRAGMA user_version")
        conn.execute(sa.text("x"))
        psycopg.connect("dbname=x")
        try:
            pass
        except (sa.exc.OperationalError, psycopg.Error, exc.DBAPIError):
            pass
        q = "DELETE FROM events WHERE id = 1"
    ''')


def test_the_sql_check_finds_each_kind_of_sql() -> None:
    found = {(f.line, f.what.split(":")[0]) for f in sql_findings("cigri/engine/bad.py", BAD_SQL)}
    assert found == {
        (2, "uses the database driver sqlite3"), (4, "imports sqlalchemy.select"),
        (6, "imports from sqlalchemy.dialects.postgresql"), (7, "imports the tables (cigri.db.schema)"),
        (8, "imports the tables (cigri.db.schema)"), (9, "imports the tables (cigri.db.schema)"),
        (10, "imports the tables (cigri.db.schema)"), (14, ".execute()"), (14, "uses sqlalchemy.select"),
        (15, ".exec_driver_sql()"), (15, "SQL text 'PRAGMA user_version'"), (16, ".execute()"),
        (16, "uses sqlalchemy.text"), (17, "uses psycopg.connect"), (22, "SQL text 'DELETE FROM events WHERE id = 1'"),
    }
    # the same module inside the data layer is fine
    assert sql_findings("cigri/db/bad.py", BAD_SQL) == []


def test_the_sqlite_driver_import_form_is_caught() -> None:
    assert [f.line for f in sql_findings("cigri/x.py", "from sqlite3 import connect\n")] == [1]


@pytest.mark.parametrize("path, found", [
    ("cigri/engine/runner.py", ["Launching", "Running", "Terminated", "Error"]),
    ("cigri/clusters/local.py", ["Launching", "Running", "Terminated", "Error"]),
    ("cigri/clusters/oar2_5.py", []), ("cigri/clusters/oar3.py", []),
    ("cigri/api/routes/jobs.py", ["Launching", "Running", "Terminated"]),  # "Error": the API's error title
])
def test_the_oar_word_check_finds_oar_states(path: str, found: list[str]) -> None:
    code = textwrap.dedent('''\
        """A job is Running when OAR says so (prose may name OAR's words)."""
        def outcome(raw: str) -> str:
            # comments may too: Terminated
            if raw in ("Running", "Launching"): return "running"
            return "done" if raw == "Terminated" else "Error"
        ''')
    assert sorted(f.what.split("'")[1] for f in oar_word_findings(path, code)) == sorted(found)


def test_the_job_state_check_finds_other_writers() -> None:
    code = textwrap.dedent('''\
        def change_state(conn, ids, old, new):
            conn.execute(jobs.update().where(jobs.c.id.in_(ids)).values(state=new))

        def sneaky(conn, i):
            conn.execute(jobs.update().where(jobs.c.id == i).values(state="running"))
            conn.execute(schema.jobs.update().values(state="event"))
            conn.execute(sa.update(jobs).values(state="event"))
            conn.execute(sa.text("update jobs set state = 'terminated'"))
            conn.execute(campaigns.update().values(state="terminated"))
        ''')
    assert [f.line for f in job_state_write_findings("cigri/db/jobs.py", code)] == [5, 6, 7, 8]
    assert [f.line for f in job_state_write_findings("cigri/db/other.py", code)] == [2, 5, 6, 7, 8]
