"""Submitting a containerised campaign through the real API and `gridsub`, as a user does: a
cluster's declared engines are enforced and mistakes in the block come back as one line."""

from __future__ import annotations

import json
import subprocess

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.db import schema
from tests.api.conftest import VENV_BIN, Server, clusters, server  # noqa: F401 - fixtures


def admin(server: Server, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: F811 - fixture name
    env = dict(server.env(), CIGRICONFFILE=server.conf_file)
    return subprocess.run([str(VENV_BIN / "cigri-admin"), "cluster", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def campaigns(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.campaigns)).scalar_one())


def jdl(**blocks: object) -> str:
    return json.dumps({"name": "ctr", "exec_file": "/opt/app/run", "params": ["a", "b"],
                       "container": {"engine": "apptainer", "image": "~/app.sif"}, "clusters": blocks})


def test_gridsub_refuses_an_engine_the_cluster_does_not_offer(server: Server, clusters: dict[str, int],  # noqa: F811
                                                              pg_engine: Engine) -> None:
    assert admin(server, "set", "dahu", "--container-engines", "apptainer").returncode == 0
    r = server.run("gridsub", "-j", jdl(dahu={"container": {"engine": "podman", "image": "localhost/app"}}),
                   user="alice")
    assert r.returncode == 1
    assert "Cluster 'dahu' offers only the container engine apptainer, but the campaign asks for 'podman' there" \
        in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert campaigns(pg_engine) == 0
    r = server.run("gridsub", "-j", jdl(dahu={}, bigfoot={"container": {"engine": "podman"}}), user="alice")
    assert r.returncode == 0, r.stderr  # apptainer on dahu; bigfoot declared nothing: any engine
    assert campaigns(pg_engine) == 1


def test_gridsub_names_a_mistake_in_the_block(server: Server, clusters: dict[str, int],  # noqa: F811
                                              pg_engine: Engine) -> None:
    r = server.run("gridsub", "-j", jdl(dahu={"container": {"bind": ["data:/data"]}}), user="alice")
    assert r.returncode == 1
    assert "Field 'container' of cluster 'dahu': bind \"data:/data\": path \"data\" is not absolute" in r.stderr
    assert campaigns(pg_engine) == 0
