"""Shared fixtures: a real PostgreSQL database per test session (created and dropped
here), a SQLite database per test, and configurations built in memory.

PostgreSQL is reached through CIGRI_TEST_PG (default: role cigri on 127.0.0.1, as
tools/pg-setup creates it). Real parts (PostgreSQL, the OAR testbed, ...) are declared in
tests/parts.py: a missing part skips its tests on a developer machine and fails them in CI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.config import Conf, set_conf
from cigri.db import schema
from cigri.db.admin import create_scratch_database, database_conf_values, drop_scratch_database, init_schema
from cigri.db.engine import make_engine, reset_engines
from tests import parts

PG_BASE = os.environ.get("CIGRI_TEST_PG", "postgresql+psycopg://cigri:cigri@127.0.0.1:5432")
TABLES = [t.name for t in schema.metadata.sorted_tables]


def _probe_postgres() -> str | None:
    eng = sa.create_engine(f"{PG_BASE}/postgres", connect_args={"connect_timeout": 5})
    try:
        with eng.connect() as c:
            c.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as e:
        return f"cannot connect to {sa.make_url(PG_BASE).render_as_string(hide_password=True)}: " + (
            str(getattr(e, "orig", e)).strip().splitlines() or [type(e).__name__])[0]
    finally:
        eng.dispose()
    return None


POSTGRES = parts.Part("PostgreSQL", "CIGRI_POSTGRES", _probe_postgres, hint="sudo tools/pg-setup")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Parts declared with tests.parts.requires_part, and the testbed of every test marked `oar` or `slurm`."""
    parts.check_marked_parts(item)
    if item.get_closest_marker("oar") is not None:
        from tests.oar_testbed import OAR_TESTBED

        OAR_TESTBED.require()
    if item.get_closest_marker("slurm") is not None:
        from tests.slurm_testbed import SLURM_TESTBED

        SLURM_TESTBED.require()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, (reason, required) in sorted(parts.MISSING.items()):
        terminalreporter.write_line(f"MISSING PART {name}: {reason} (its tests "
                                    f"{'FAILED: the part is required' if required else 'were skipped'})",
                                    red=required, yellow=not required)


def _admin_engine() -> Engine:
    """The server's `postgres` database, for tests that build a database by hand (CiGri 3.0 upgrade)."""
    POSTGRES.require()
    return sa.create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_dbname() -> Iterator[str]:
    """A fresh PostgreSQL database with the CiGri schema, dropped at the end of the session."""
    POSTGRES.require()
    name = f"cigri_test_{os.getpid()}"
    create_scratch_database(PG_BASE, name)
    yield name
    reset_engines()
    drop_scratch_database(PG_BASE, name)


def pg_conf_values(dbname: str) -> dict[str, str]:
    return database_conf_values(f"{PG_BASE}/{dbname}")


@pytest.fixture(scope="session")
def pg_engine_session(pg_dbname: str) -> Iterator[Engine]:
    eng = make_engine(Conf(values=pg_conf_values(pg_dbname)))
    yield eng
    eng.dispose()


def clean_database(engine: Engine) -> None:
    """Empty every table (ids restart) and put back the null parameter."""
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.execute(sa.text("TRUNCATE " + ", ".join(f'"{t}"' for t in TABLES) + " RESTART IDENTITY"))
        else:
            for t in TABLES:
                c.execute(sa.text(f'DELETE FROM "{t}"'))
            c.execute(sa.text("DELETE FROM sqlite_sequence"))
        c.execute(schema.parameters.insert().values(
            id=0, campaign_id=0, name="null", param="null parameter for special jobs, dont delete!"))


@pytest.fixture
def pg_conf(pg_dbname: str, tmp_path: Path) -> Iterator[Conf]:
    conf = Conf(values=pg_conf_values(pg_dbname) | {"LOG_FILE": "STDERR"})
    set_conf(conf)
    yield conf
    set_conf(None)


@pytest.fixture
def pg_engine(pg_engine_session: Engine, pg_conf: Conf) -> Engine:
    """A clean PostgreSQL database (all tables emptied before the test)."""
    clean_database(pg_engine_session)
    return pg_engine_session


@pytest.fixture
def sqlite_conf(tmp_path: Path) -> Iterator[Conf]:
    conf = Conf(values={"DATABASE_TYPE": "SQLite", "DATABASE_PATH": str(tmp_path / "cigri.sqlite"),
                        "LOG_FILE": "STDERR"})
    set_conf(conf)
    yield conf
    set_conf(None)


@pytest.fixture
def sqlite_engine(sqlite_conf: Conf) -> Iterator[Engine]:
    eng = make_engine(sqlite_conf)
    init_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Run the test on both databases."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_engine")
    return request.getfixturevalue("sqlite_engine")


def add_cluster(engine: Engine, name: str = "c1", batch: str = "oar2_5",
                api_url: str = "http://127.0.0.1:9/oarapi/", **kw: object) -> int:
    """A cluster row. The default URL is a closed port: a test that really talks to a cluster
    passes its URL (the OAR testbed: tests/oar_testbed.register_testbed_clusters)."""
    values = {"name": name, "api_url": api_url, "batch": batch, "api_auth_type": "none",
              "resource_unit": "core", "enabled": True} | kw
    with engine.begin() as c:
        return int(c.execute(schema.clusters.insert().values(**values).returning(schema.clusters.c.id)).scalar_one())


# A hung test must fail with a traceback, not eat CI's time budget: each test gets a
# deadline (CIGRI_TEST_TIMEOUT seconds, 900 for tests marked oar/slurm/slow, 300 otherwise).
@pytest.fixture(autouse=True)
def _test_deadline(request: pytest.FixtureRequest) -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    slow = any(request.node.get_closest_marker(m) for m in ("oar", "slurm", "slow"))
    limit = int(os.environ.get("CIGRI_TEST_TIMEOUT", "900" if slow else "300"))

    def _expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"test exceeded its {limit} s deadline")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
