"""Campaign operations on both databases."""

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from cigri import campaigns as C
from cigri.db import schema
from cigri.errors import CigriError, NotFound, ParseError, StateError, Unauthorized
from tests.conftest import add_cluster

JDL = {"name": "test", "nb_jobs": 10, "clusters": {"dahu": {"exec_file": "e"}}}


def q(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


def counts(engine, cid):
    return (q(engine, "SELECT count(*) FROM parameters WHERE campaign_id = :c", c=cid)[0][0],
            q(engine, "SELECT count(*) FROM bag_of_tasks WHERE campaign_id = :c", c=cid)[0][0])


@pytest.fixture
def clusters(engine):
    return {"dahu": add_cluster(engine, "dahu"), "bigfoot": add_cluster(engine, "bigfoot")}


def test_submit_two_params_three_clusters(engine, clusters):
    jdl = {"name": "n", "params": ["0", "1"], "exec_file": "e",
           "clusters": {"dahu": {}, "bigfoot": {"walltime": "00:05:00"}, "my.other_cluster.fr": {}}}
    cid = C.submit_campaign(engine, jdl, "Rspec")
    assert isinstance(cid, int)
    assert counts(engine, cid) == (2, 2)
    rows = q(engine, "SELECT p.name, p.param, b.priority FROM parameters p JOIN bag_of_tasks b "
                     "ON b.param_id = p.id WHERE p.campaign_id = :c ORDER BY p.id", c=cid)
    assert [tuple(r) for r in rows] == [("0", "0", 10), ("1", "1", 10)]
    props = q(engine, "SELECT cluster_id, name, value FROM campaign_properties WHERE campaign_id = :c", c=cid)
    assert {r[0] for r in props} == {clusters["dahu"], clusters["bigfoot"]}
    assert (clusters["bigfoot"], "walltime", "00:05:00") in [tuple(r) for r in props]
    camp = q(engine, "SELECT state, type, nb_jobs, jdl, grid_user FROM campaigns WHERE id = :c", c=cid)[0]
    assert camp[0] == "in_treatment" and camp[1] == "normal" and camp[2] == 2 and camp[4] == "Rspec"
    stored = json.loads(camp[3])
    assert stored["params"] == [] and stored["params_count"] == 2
    assert set(stored["clusters"]) == {"dahu", "bigfoot", "my.other_cluster.fr"}


def test_non_object_jdl(engine, clusters):
    for bad in ("", "[]", "3", None):
        with pytest.raises(CigriError):
            C.submit_campaign(engine, bad, "u")
    assert q(engine, "SELECT count(*) FROM campaigns")[0][0] == 0


def test_save(engine, clusters):
    assert isinstance(C.submit_campaign(engine, JDL, "u"), int)
    with pytest.raises(ParseError):
        C.submit_campaign(engine, {"name": "n", "clusters": {"dahu": {"exec_file": "e"}}}, "u")


def test_no_usable_cluster_writes_nothing(engine, clusters):
    with pytest.raises(ParseError, match="No clusters usable"):
        C.submit_campaign(engine, {"name": "n", "nb_jobs": 2, "exec_file": "e", "clusters": {"x": {}}}, "u")
    with pytest.raises(ParseError, match="not yet supported"):
        C.submit_campaign(engine, {"name": "n", "jobs_type": "desktop_computing", "exec_file": "e",
                                   "clusters": {"dahu": {}}}, "u")
    assert q(engine, "SELECT count(*) FROM campaigns")[0][0] == 0


def test_duplicate_names_in_params(engine, clusters):
    jdl = {"name": "n", "params": ["a 1", "b 2", "a 3"], "exec_file": "e", "clusters": {"dahu": {}}}
    with pytest.raises(ParseError, match=r"duplicate parameter name 'a' at lines 1 and 3"):
        C.submit_campaign(engine, jdl, "u")
    assert q(engine, "SELECT count(*) FROM campaigns")[0][0] == 0


def test_duplicate_names_in_param_file_name_the_lines(engine, clusters, tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("".join(f"p{i} x\n" for i in range(120_000)) + "p7 again\n")
    jdl = {"name": "n", "param_file": str(pf), "exec_file": "e", "clusters": {"dahu": {}}}
    with pytest.raises(ParseError, match=r"duplicate parameter name 'p7' at lines 8 and 120001 of parameter file"):
        C.submit_campaign(engine, jdl, "u")
    assert q(engine, "SELECT count(*) FROM campaigns")[0][0] == 0
    assert q(engine, "SELECT count(*) FROM parameters WHERE id > 0")[0][0] == 0
    assert q(engine, "SELECT count(*) FROM bag_of_tasks")[0][0] == 0
    blank = tmp_path / "b.txt"
    blank.write_text("a\n\nb\n\n")
    with pytest.raises(ParseError, match=r"duplicate parameter name '' at lines 2 and 4"):
        C.submit_campaign(engine, jdl | {"param_file": str(blank)}, "u")


def test_bad_line_mid_file_writes_nothing(engine, clusters, tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_bytes(b"".join(b"p%d\n" % i for i in range(60_000)) + b"bad\x00\n")
    with pytest.raises(ParseError, match="line 60001 of parameter file"):
        C.submit_campaign(engine, {"name": "n", "param_file": str(pf), "exec_file": "e",
                                   "clusters": {"dahu": {}}}, "u")
    assert q(engine, "SELECT count(*) FROM parameters WHERE id > 0")[0][0] == 0
    assert q(engine, "SELECT count(*) FROM bag_of_tasks")[0][0] == 0


def test_special_characters_survive(engine, clusters):
    lines = ["a\tb c", "back\\slash x", "quote 'q' \"d\"", "uni ü€", "cr\rinside"]
    cid = C.submit_campaign(engine, {"name": "n", "params": lines, "exec_file": "e", "clusters": {"dahu": {}}}, "u")
    got = [r[0] for r in q(engine, "SELECT param FROM parameters WHERE campaign_id = :c ORDER BY id", c=cid)]
    assert got == lines


def test_large_param_file_both_paths(engine, clusters, tmp_path):
    """More than one chunk: the parallel bag writer on PostgreSQL."""
    pf = tmp_path / "p.txt"
    n = 120_001
    pf.write_text("".join(f"t{i} {i}\n" for i in range(n)))
    cid = C.submit_campaign(engine, {"name": "n", "param_file": str(pf), "exec_file": "e",
                                     "clusters": {"dahu": {}}}, "u")
    assert counts(engine, cid) == (n, n)
    if engine.dialect.name == "postgresql":
        # Fresh statistics: after the suite's TRUNCATEs the planner believes these tables are
        # empty and would nest-loop 120k x 120k rows for the check below.
        with engine.begin() as c:
            c.execute(sa.text("ANALYZE bag_of_tasks"))
            c.execute(sa.text("ANALYZE parameters"))
    assert q(engine, "SELECT count(*) FROM bag_of_tasks b JOIN parameters p ON p.id = b.param_id "
                     "WHERE b.campaign_id = :c AND p.campaign_id = :c", c=cid)[0][0] == n
    assert q(engine, "SELECT nb_jobs FROM campaigns WHERE id = :c", c=cid)[0][0] == n


# ---------------------------------------------------------------- add tasks
def test_add_tasks_refusals(engine, clusters):
    cid = C.submit_campaign(engine, JDL, "Rspec")
    with pytest.raises(NotFound):
        C.add_tasks(engine, 123456, ["a"], "Rspec")
    with pytest.raises(Unauthorized):
        C.add_tasks(engine, cid, ["a"], "other")
    C.cancel_campaign(engine, cid, "Rspec")
    with pytest.raises(StateError, match="cancelled"):
        C.add_tasks(engine, cid, ["a"], "Rspec")


def test_add_to_terminated(engine, clusters):
    cid = C.submit_campaign(engine, JDL, "Rspec")
    with engine.begin() as c:
        c.execute(schema.campaigns.update().where(schema.campaigns.c.id == cid).values(state="terminated"))
    assert C.add_tasks(engine, cid, ["a", "b"], "Rspec") == 2
    assert q(engine, "SELECT state, nb_jobs FROM campaigns WHERE id = :c", c=cid)[0] == ("in_treatment", 12)
    assert counts(engine, cid) == (12, 12)
    assert json.loads(q(engine, "SELECT jdl FROM campaigns WHERE id = :c", c=cid)[0][0])["params_count"] == 12
    assert C.add_tasks(engine, cid, ["c"], "root") == 1  # admin


def test_add_tasks_duplicate_of_existing(engine, clusters):
    cid = C.submit_campaign(engine, JDL, "u")
    with pytest.raises(ParseError, match=r"duplicate parameter name '3' at line 2 .*already used"):
        C.add_tasks(engine, cid, ["x", "3 again"], "u")
    assert counts(engine, cid) == (10, 10)


# ---------------------------------------------------------------- state changes
def test_cancel(engine, clusters):
    cid = C.submit_campaign(engine, JDL, "Rspec")
    with engine.begin() as c:
        task = c.execute(sa.select(schema.bag_of_tasks.c.id).limit(1)).scalar_one()
        c.execute(schema.jobs_to_launch.insert().values(task_id=task, cluster_id=clusters["dahu"]))
    with pytest.raises(NotFound):
        C.cancel_campaign(engine, 99999, "Rspec")
    with pytest.raises(Unauthorized):
        C.cancel_campaign(engine, cid, "other")
    assert C.cancel_campaign(engine, cid, "Rspec") == 1
    assert C.cancel_campaign(engine, cid, "Rspec") == 0
    assert q(engine, "SELECT state FROM campaigns WHERE id = :c", c=cid)[0][0] == "cancelled"
    assert counts(engine, cid) == (10, 0)
    assert q(engine, "SELECT count(*) FROM jobs_to_launch")[0][0] == 0
    ev = q(engine, "SELECT class, code, state FROM events WHERE campaign_id = :c", c=cid)
    assert [tuple(r) for r in ev] == [("campaign", "USER_FRAG", "open")]


def test_delete(engine, clusters):
    cid = C.submit_campaign(engine, JDL, "Rspec")
    with pytest.raises(NotFound):
        C.delete_campaign(engine, -1, "Rspec")
    with pytest.raises(Unauthorized):
        C.delete_campaign(engine, cid, "other")
    assert C.delete_campaign(engine, cid, "Rspec")
    assert q(engine, "SELECT count(*) FROM campaigns")[0][0] == 0
    assert counts(engine, cid) == (0, 0)
    assert q(engine, "SELECT count(*) FROM parameters WHERE id = 0")[0][0] == 1


def test_pause_resume_and_state_rules(engine, clusters):
    cid = C.submit_campaign(engine, JDL, "u")
    with pytest.raises(StateError):
        C.resume_campaign(engine, cid, "u")
    C.pause_campaign(engine, cid, "u")
    with pytest.raises(StateError):
        C.pause_campaign(engine, cid, "u")
    C.resume_campaign(engine, cid, "u")
    codes = [r[0] for r in q(engine, "SELECT code FROM events WHERE campaign_id = :c AND state = 'closed' "
                                     "ORDER BY id", c=cid)]
    assert codes == ["PAUSED", "RESUMED"]
    row = C.update_campaign(engine, cid, "u", name="toto", state="paused")
    assert row["name"] == "toto" and row["state"] == "paused"
    C.cancel_campaign(engine, cid, "u")
    with pytest.raises(StateError):  # no revival of a cancelled campaign (CiGri3 allowed it)
        C.update_campaign(engine, cid, "u", state="in_treatment")
    with pytest.raises(ParseError):
        C.update_campaign(engine, cid, "u", state="terminated")
    with pytest.raises(ParseError):
        C.update_campaign(engine, cid, "u", name="")
    with pytest.raises(Unauthorized):
        C.update_campaign(engine, cid, "other", name="x")


def test_purge(engine, clusters):
    cid = C.submit_campaign(engine, JDL, "u")
    with pytest.raises(StateError, match="only terminated or cancelled"):
        C.purge_campaign(engine, cid, "u")
    with engine.begin() as c:
        c.execute(schema.jobs.insert().values(campaign_id=cid, param_id=1, state="running", cluster_id=1))
    C.cancel_campaign(engine, cid, "u")
    with pytest.raises(StateError, match="1 active jobs"):
        C.purge_campaign(engine, cid, "u")
    with engine.begin() as c:
        c.execute(schema.jobs.update().values(state="terminated"))
    assert C.purge_campaign(engine, cid, "u") == 10
    assert counts(engine, cid) == (0, 0)
    assert q(engine, "SELECT count(*) FROM jobs")[0][0] == 0
    assert q(engine, "SELECT state FROM campaigns WHERE id = :c", c=cid)[0][0] == "cancelled"
    codes = {tuple(r) for r in q(engine, "SELECT code, state FROM events WHERE campaign_id = :c", c=cid)}
    assert codes == {("USER_FRAG", "closed"), ("PURGE", "closed")}


def test_memory_flat_with_param_file(engine, clusters, tmp_path):
    """A 100k-line submission in a fresh process: its peak RSS (VmHWM: ru_maxrss would
    include pytest's own peak) stays far below what a list of the lines would need."""
    pf = tmp_path / "p.txt"
    with open(pf, "w") as f:
        for i in range(100_000):
            f.write(f"task{i} " + "x" * 600 + "\n")  # ~61 MB in all
    url = engine.url.render_as_string(hide_password=False)
    code = f"""
import sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
from cigri.config import Conf, set_conf
from cigri.db.engine import make_engine
from cigri import campaigns
conf = Conf(values={{"DATABASE_TYPE": "SQLite" if {url!r}.startswith("sqlite") else "PostgreSQL"}})
set_conf(conf)
eng = make_engine(conf, url={url!r})
base = hwm()
cid = campaigns.submit_campaign(eng, {{"name": "m", "param_file": {str(pf)!r}, "exec_file": "e",
                                      "clusters": {{"dahu": {{}}}}}}, "u")
print(cid, hwm() - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    cid, grown_kb = map(int, out.stdout.split())
    assert counts(engine, cid) == (100_000, 100_000)
    assert grown_kb < 40_000, f"peak RSS grew by {grown_kb} kB for a 61 MB file"
    print("peak RSS growth (kB):", grown_kb)


def test_connection_and_cluster_ids(engine, clusters):
    from cigri.db.clusters import cluster_ids_by_name, get_cluster
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT 1")).scalar_one() == 1
        assert isinstance(get_cluster(c, name="dahu").id, int)
        with pytest.raises(NotFound):
            get_cluster(c, name="nowhere")
        assert cluster_ids_by_name(c, []) == {}
        assert cluster_ids_by_name(c, ["dahu", "bigfoot", "non_existing.cluster"]) == clusters
        assert cluster_ids_by_name(c, ["non_existing.cluster"]) == {}


def test_list_parameters_rebuilds_params(engine, clusters):
    from cigri.db.parameters import list_parameters
    cid = C.submit_campaign(engine, {"name": "n", "params": ["x 1", "y 2", "z 3"], "exec_file": "e",
                                     "clusters": {"dahu": {}}}, "u")
    with engine.connect() as c:
        assert [p["param"] for p in list_parameters(c, cid)] == ["x 1", "y 2", "z 3"]
        assert [p["name"] for p in list_parameters(c, cid, limit=1, offset=1)] == ["y"]


def test_concurrent_submissions(pg_engine, tmp_path):
    """Two large submissions and an add_tasks at the same time: id ranges never collide."""
    import threading
    add_cluster(pg_engine, "dahu")
    first = C.submit_campaign(pg_engine, JDL, "u")
    files = []
    for k in range(2):
        pf = tmp_path / f"p{k}.txt"
        pf.write_text("".join(f"c{k}_{i}\n" for i in range(110_000)))
        files.append(pf)
    results, errors = [], []

    def submit(pf):
        try:
            results.append(C.submit_campaign(pg_engine, {"name": "c", "param_file": str(pf), "exec_file": "e",
                                                         "clusters": {"dahu": {}}}, "u"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def add():
        try:
            for i in range(20):
                C.add_tasks(pg_engine, first, [f"extra{i}"], "u")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(f,)) for f in files] + [threading.Thread(target=add)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    for cid in results:
        assert counts(pg_engine, cid) == (110_000, 110_000)
    assert counts(pg_engine, first) == (30, 30)
    assert q(pg_engine, "SELECT count(*) FROM bag_of_tasks b JOIN parameters p ON p.id = b.param_id "
                        "AND p.campaign_id = b.campaign_id")[0][0] == 220_030


def test_invalid_db_handle_raises():
    eng = sa.create_engine("postgresql+psycopg://cigri:cigri@127.0.0.1:1/nowhere")
    with pytest.raises(sa.exc.OperationalError):
        C.submit_campaign(eng, JDL, "u")
