"""The JDL `container` block: validation with one message per mistake, field-level merge into
clusters, macros, the engines a cluster offers, and the outcome of a container failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from cigri import containers
from cigri import jdl as J
from cigri.campaigns import submit_campaign
from cigri.clusters.base import ExitStatus, Outcome, RemoteJob
from cigri.config import Conf
from cigri.db import schema
from cigri.db.clusters import set_container_engines
from cigri.engine.analysis import analyze_remote_job
from cigri.errors import ParseError
from tests.conftest import add_cluster

CONF = Conf(values={"DEFAULT_JOB_RESOURCES": "/core=1", "DEFAULT_JOB_WALLTIME": "02:00:00",
                    "DEFAULT_MAX_RESUBMIT": "7"})


def jdl(container=None, clusters=None, **kw):
    d = {"name": "n", "exec_file": "/opt/app/run", "params": ["a"], "clusters": clusters or {"c1": {}}} | kw
    if container is not None:
        d["container"] = container
    return d


def expand(d):
    return J.expand_jdl(d, CONF, "root")


@pytest.mark.parametrize("container,msg", [
    ({"engine": "lxc", "image": "/i"}, "Field 'container': unknown engine \"lxc\" (known: apptainer, singularity, "
                                       "podman, docker, charliecloud, bwrap)"),
    ({"engine": 3, "image": "/i"}, "unknown engine 3"),
    ({"engine": "bwrap", "imgae": "/i"}, "Field 'container': unknown field \"imgae\" (known: engine, image"),
    ({"engine": "bwrap", "image": ""}, "'image' must be a non-empty string"),
    ({"engine": "bwrap", "image": "/i", "bind": ["data"]}, "bind \"data\": path \"data\" is not absolute"),
    ({"engine": "bwrap", "image": "/i", "bind": ["/a:/b:rx"]}, "bind \"/a:/b:rx\" is not \"src\", \"src:dst\" "
                                                              "or \"src:dst:ro\""),
    ({"engine": "bwrap", "image": "/i", "bind": ["/a::/b"]}, "is not \"src\", \"src:dst\""),
    ({"engine": "bwrap", "image": "/i", "bind": ["/a,/b"]}, "contains a comma: give one bind per array element"),
    ({"engine": "bwrap", "image": "/i", "bind": [3]}, "bind 0 must be a non-empty string"),
    ({"engine": "bwrap", "image": "/i", "bind": {"a": "b"}}, "'bind' must be an array"),
    ({"engine": "bwrap", "image": "/i", "env": {"1X": "a"}}, "'env' has an invalid variable name \"1X\""),
    ({"engine": "bwrap", "image": "/i", "env": {"X": ["a"]}}, "'env' value of X must be a string"),
    ({"engine": "bwrap", "image": "/i", "env": ["X=1"]}, "'env' must be an object"),
    ({"engine": "bwrap", "image": "/i", "options": "--nv"}, "'options' must be an array of strings"),
    ("podman", "Field 'container' must be an object"),
])
def test_each_mistake_gets_one_message_naming_it(container, msg):
    with pytest.raises(ParseError) as e:
        expand(jdl(container))
    assert msg in str(e.value)


def test_a_mistake_in_a_cluster_block_names_the_cluster():
    with pytest.raises(ParseError, match="Field 'container' of cluster 'c2': unknown engine \"dockr\""):
        expand(jdl({"engine": "podman", "image": "i"}, {"c1": {}, "c2": {"container": {"engine": "dockr"}}}))


@pytest.mark.parametrize("container,msg", [
    ({"image": "/i"}, "Cluster 'c1': the container block has no 'engine' (one of apptainer"),
    ({"engine": "apptainer"}, "Cluster 'c1': the container block has no 'image'"),
    ({"engine": "docker", "image": "~/rootfs"}, "docker runs images by name, not a directory"),
    ({"engine": "bwrap", "image": "library/app:1"}, "bwrap needs the path of an image directory"),
])
def test_incomplete_block_after_merge(container, msg):
    with pytest.raises(ParseError) as e:
        expand(jdl(container))
    assert msg in str(e.value)


def test_field_level_merge_macros_and_no_container_on_a_cluster():
    top = {"engine": "apptainer", "image": "~/images/app.sif", "bind": ["~/data:/data:ro", "/scratch/{CAMPAIGN_ID}"],
           "env": {"OMP_NUM_THREADS": 1, "WHERE": "{HOME}/x"}, "options": ["--nv"]}
    e = expand(jdl(top, {"dahu": {}, "luke": {"container": {"engine": "charliecloud", "image": "/bettik/app"}},
                         "laptop": {"container": {"engine": "podman", "image": "localhost/app:1", "env": {}}},
                         "native": {"container": False}}))
    c = e["clusters"]
    assert c["dahu"]["container"] == {
        "engine": "apptainer", "image": "$HOME/images/app.sif", "options": ["--nv"],
        "bind": ["$HOME/data:/data:ro", "/scratch/${CIGRI_CAMPAIGN_ID}:/scratch/${CIGRI_CAMPAIGN_ID}"],
        "env": {"OMP_NUM_THREADS": "1", "WHERE": "${HOME}/x"}}
    assert c["luke"]["container"]["engine"] == "charliecloud" and c["luke"]["container"]["image"] == "/bettik/app"
    assert c["luke"]["container"]["options"] == ["--nv"]  # the rest comes from the top-level block
    assert c["laptop"]["container"]["env"] == {}  # a field given by the cluster replaces the top-level one
    assert "container" not in c["native"]
    props = J.cluster_properties(e, "dahu")
    assert containers.from_property(props["container"]) == c["dahu"]["container"]
    assert "container" not in J.cluster_properties(e, "native")
    assert J.parse_jdl(e)["clusters"]["dahu"]["container"] == c["dahu"]["container"]  # re-parse is idempotent


def test_block_only_in_a_cluster():
    e = expand(jdl(None, {"c1": {"container": {"engine": "BWRAP", "image": "/img"}}, "c2": {}}))
    assert e["clusters"]["c1"]["container"] == {"engine": "bwrap", "image": "/img"}
    assert "container" not in e["clusters"]["c2"]


# ---------------------------------------------------------------- engines a cluster offers
@pytest.fixture
def clusters(engine):
    ids = {n: add_cluster(engine, n) for n in ("dahu", "luke", "laptop")}
    with engine.begin() as c:
        set_container_engines(c, ids["dahu"], "apptainer,singularity")
        set_container_engines(c, ids["luke"], "")
    return ids


def n_campaigns(engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(schema.campaigns)).scalar_one())


@pytest.mark.parametrize("cluster,engine_name,msg", [
    ("dahu", "podman", "Cluster 'dahu' offers only the container engines apptainer, singularity, but the campaign "
                       "asks for 'podman' there"),
    ("luke", "charliecloud", "Cluster 'luke' offers no container engine, but the campaign asks for 'charliecloud' "
                             "there"),
])
def test_campaign_asking_an_engine_a_cluster_lacks_is_refused(engine, clusters, cluster, engine_name, msg):
    d = jdl({"engine": "apptainer", "image": "/i.sif"},
            {"laptop": {}, cluster: {"container": {"engine": engine_name}}})
    with pytest.raises(ParseError) as e:
        submit_campaign(engine, d, "alice", CONF)
    assert str(e.value) == msg
    assert n_campaigns(engine) == 0


def test_declared_engine_and_undeclared_cluster_are_accepted(engine, clusters):
    d = jdl({"engine": "apptainer", "image": "/i.sif"},
            {"dahu": {}, "laptop": {"container": {"engine": "podman", "image": "localhost/app"}},
             "luke": {"container": False}})
    cid = submit_campaign(engine, d, "alice", CONF)
    with engine.connect() as c:
        rows = {(r.cluster_id, r.value) for r in c.execute(sa.select(schema.campaign_properties).where(
            schema.campaign_properties.c.campaign_id == cid, schema.campaign_properties.c.name == "container"))}
    assert {cl for cl, _ in rows} == {clusters["dahu"], clusters["laptop"]}
    assert {json.loads(v)["engine"] for _, v in rows} == {"apptainer", "podman"}


def test_admin_engine_list_is_validated():
    assert containers.parse_engine_list("Apptainer, charliecloud bwrap") == ["apptainer", "charliecloud", "bwrap"]
    assert containers.parse_engine_list("") == []
    assert containers.parse_engine_list(None) is None
    with pytest.raises(ParseError, match="Unknown container engine \"runc\""):
        containers.parse_engine_list("apptainer,runc")


# ---------------------------------------------------------------- outcome of a failed container
def job(status: int) -> RemoteJob:
    return RemoteJob(id=7, outcome=Outcome.DONE, raw_state="Terminated", exit=ExitStatus.exited(status),
                     stderr_file="OAR.7.stderr", launching_directory="/w")


def test_container_failure_becomes_a_container_error_event_saying_what_to_fix():
    tail = ("some engine noise\ncigri: container error [image-not-found]: image /home/a/app.sif does not exist "
            "(apptainer, node n1)\n")
    an = analyze_remote_job(None, 3, job(125), lambda r: tail)
    assert an.code == "CONTAINER_ERROR" and an.open
    assert an.message.startswith("Container error (image-not-found): image /home/a/app.sif does not exist "
                                 "(apptainer, node n1). Put the image where every node of this cluster sees it")
    assert "exit status 32000" in an.message and "some engine noise" in an.message
    # a batch sub-job of temporal grouping is analysed the same way
    assert analyze_remote_job("batch", 3, job(125), lambda r: tail).code == "CONTAINER_ERROR"


@pytest.mark.parametrize("status,tail", [
    (125, "my program failed\n"),  # a task's own 125, without the marker
    (1, "cigri: container error [engine-missing]: x (bwrap, node n)\n"),  # the marker, but not CiGri's status
])
def test_task_errors_stay_exit_errors(status, tail):
    assert analyze_remote_job(None, 3, job(status), lambda r: tail).code == "EXIT_ERROR"


def test_prologue_errors_are_not_container_errors():
    tail = "cigri: container error [engine-missing]: x (bwrap, node n)\n"
    assert analyze_remote_job("prologue", 3, job(125), lambda r: tail).code == "PROLOG_EXIT_ERROR"


# ---------------------------------------------------------------- admin side
def admin(conf_file: Path, *args: str) -> tuple[int, str]:
    r = subprocess.run([str(Path(sys.executable).parent / "cigri-admin"), "cluster", *args], capture_output=True,
                       text=True, env=dict(os.environ, CIGRICONFFILE=str(conf_file)), timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_admin_declares_a_clusters_engines(tmp_path: Path) -> None:
    conf = tmp_path / "cigri.conf"
    conf.write_text(f'DATABASE_TYPE = "SQLite"\nDATABASE_PATH = "{tmp_path}/cigri.sqlite"\n')
    from cigri.db.admin import init_schema
    from cigri.db.engine import make_engine

    eng = make_engine(Conf(str(conf)))
    init_schema(eng)
    assert admin(conf, "add", "dahu", "http://x/", "--container-engines", "apptainer,lxc") == \
        (1, "Unknown container engine \"lxc\" (known: apptainer, singularity, podman, docker, charliecloud, "
            "bwrap)\n")
    assert admin(conf, "add", "dahu", "http://x/", "--container-engines", "Apptainer, charliecloud")[0] == 0
    assert admin(conf, "add", "luke", "http://y/")[0] == 0
    rc, out = admin(conf, "list")
    assert rc == 0 and "dahu oar2_5 http://x/ auth=none containers=apptainer,charliecloud\n" in out
    assert "luke oar2_5 http://y/ auth=none\n" in out  # not declared: any engine
    assert admin(conf, "set", "luke", "--container-engines", "") == (0, "Cluster luke: container engines none\n")
    assert admin(conf, "set", "dahu", "--container-engines", "any") == \
        (0, "Cluster dahu: container engines not declared (any)\n")
    assert admin(conf, "set", "nowhere", "--container-engines", "podman") == (1, "Cluster nowhere not found\n")
    with eng.connect() as c:
        rows = dict(c.execute(sa.select(schema.clusters.c.name, schema.clusters.c.container_engines)).all())
    assert rows == {"dahu": None, "luke": ""}
    eng.dispose()


def test_a_local_database_of_an_older_cigri_gets_the_new_column(tmp_path: Path) -> None:
    """`cigri local run` on a SQLite database made before clusters.container_engines existed."""
    import sqlite3

    from cigri.cli.local import open_db
    from cigri.db.admin import check_schema, sql_dir

    old = (sql_dir() / "cigri3-sqlite.sql").read_text().replace(",\n  container_engines VARCHAR(255)", "")
    assert "container_engines" not in old
    path = tmp_path / "cigri.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(old)
        db.execute("INSERT INTO clusters (name, api_url, batch) VALUES ('local', 'local://', 'local')")
    conf = Conf(values={"DATABASE_TYPE": "SQLite", "DATABASE_PATH": str(path)})
    eng = open_db(conf)
    assert check_schema(eng)[0] == []
    with eng.connect() as c:
        assert c.execute(sa.select(schema.clusters.c.name, schema.clusters.c.container_engines)).all() == \
            [("local", None)]
    eng.dispose()


def test_container_errors_are_notified_once_per_campaign():
    """A missing image fails every task of the campaign on that cluster: the user gets one
    message quoting the first event, not one per task."""
    from cigri.engine.judas import build_messages

    evs = [{"id": i, "code": "CONTAINER_ERROR", "class": "job", "state": "open", "campaign_id": 4, "cluster_id": 1,
            "parent": None, "message": f"Container error (image-not-found): task {i}"} for i in (10, 11, 12)]
    [msg] = build_messages(evs, {4: "alice"}, {1: "dahu"}, Conf(values={}))
    assert msg.user == "alice" and msg.events == [10, 11, 12]
    assert "3 CONTAINER_ERROR event(s) on campaign #4" in msg.subject
    assert "Container error (image-not-found): task 10" in msg.body
