"""Regressions found by using CiGri as its users do (QA pass): messages a user reads."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.db import schema
from tests.api.conftest import JDL, VENV_BIN, Server


def _campaigns(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.campaigns)).scalar_one())


def test_duplicate_in_param_file_names_the_file_and_its_lines(server: Server, clusters: dict[str, int],
                                                              pg_engine: Engine) -> None:
    """The user must find the duplicate in *their* file: its path and 1-based line numbers
    (blank lines counted), not indices of a list they never wrote; nothing is written."""
    pw = pwd.getpwnam("alice")
    home = Path(pw.pw_dir)
    pf, jf = home / "cigri-qa-dup.txt", home / "cigri-qa-dup.jdl"
    try:
        pf.write_text("a 1\n\nb 2\na 3\n")
        jf.write_text(json.dumps({"name": "dup", "param_file": str(pf), "clusters": {"dahu": {"exec_file": "e"}}}))
        for f in (pf, jf):
            os.chown(f, pw.pw_uid, pw.pw_gid)
            os.chmod(f, 0o600)
        before = _campaigns(pg_engine)
        r = server.run("gridsub", "-f", str(jf), user="alice")
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1, r.stderr  # one message
        assert f"duplicate parameter name 'a' at lines 1 and 4 of param_file '{pf}'" in r.stderr
        assert _campaigns(pg_engine) == before
    finally:
        pf.unlink(missing_ok=True)
        jf.unlink(missing_ok=True)


def test_missing_jdl_file_message(server: Server, clusters: dict[str, int]) -> None:
    r = server.run("gridsub", "-f", "/nonexistent/qa.jdl", user="alice")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: cannot read JDL file /nonexistent/qa.jdl: No such file or directory"


def test_griddel_messages_end_with_one_period(server: Server, clusters: dict[str, int]) -> None:
    r = server.run("gridsub", "-j", json.dumps(JDL), user="alice")
    cid = re.search(r"CAMPAIGN_ID=(\d+)", r.stdout).group(1)  # type: ignore[union-attr]
    assert server.run("griddel", cid, user="alice").returncode == 0
    r = server.run("griddel", cid, user="alice")
    assert r.returncode == 1
    assert r.stderr.strip() == f"Failed to cancel campaign {cid}: Campaign already cancelled."


def test_admin_enables_and_disables_a_cluster_by_name(server: Server, clusters: dict[str, int],
                                                      pg_engine: Engine) -> None:
    """`cigri-admin cluster add` takes a name and `cluster list` shows names: enable/disable
    accept the name too (and the id, as before)."""
    def admin(*args: str) -> tuple[int, str]:
        env = dict(server.env(), CIGRICONFFILE=server.conf_file)
        r = subprocess.run([str(VENV_BIN / "cigri-admin"), "cluster", *args], env=env, capture_output=True,
                           text=True, timeout=120)
        return r.returncode, r.stdout + r.stderr

    def enabled() -> bool:
        with pg_engine.connect() as conn:
            q = sa.select(schema.clusters.c.enabled).where(schema.clusters.c.id == clusters["bigfoot"])
            return bool(conn.execute(q).scalar_one())

    assert admin("disable", "bigfoot") == (0, "Cluster bigfoot disabled\n")
    assert not enabled()
    assert admin("enable", str(clusters["bigfoot"]))[0] == 0
    assert enabled()
    rc, out = admin("disable", "nowhere")
    assert rc == 1 and "Cluster nowhere not found" in out


def test_admin_tools_name_a_bad_configuration_without_traceback(tmp_path: Path) -> None:
    conf = tmp_path / "cigri.conf"
    conf.write_text('DATABASE_TYPE = "PostgreSQL"\nFOO_BAR = "1"\n')
    for argv in (["cigri-admin", "cluster", "list"], ["newcluster", "a", "http://x/", "none", "", "", "X", "",
                                                       "oar2_5", "core", "1", ""]):
        r = subprocess.run([str(VENV_BIN / argv[0]), *argv[1:]], env=dict(os.environ, CIGRICONFFILE=str(conf)),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1
        assert r.stderr == f"{conf}:2: unknown variable FOO_BAR\n"
