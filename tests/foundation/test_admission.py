"""Admission rules: Python snippets run in a limited worker process."""

import os
import random

import pytest
import sqlalchemy as sa

from cigri import admission
from cigri import campaigns as C
from cigri.db import schema
from cigri.errors import AdmissionRuleError
from tests.conftest import add_cluster

JDL = {"name": "n", "nb_jobs": 5, "exec_file": "e", "clusters": {"dahu": {}}}


def add_rule(engine, code, rid=None):
    with engine.begin() as c:
        v = {"code": code} | ({"id": rid} if rid else {})
        c.execute(schema.admission_rules.insert().values(**v))


@pytest.fixture
def dahu(engine):
    return add_cluster(engine, "dahu")


def n_campaigns(engine):
    with engine.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM campaigns")).scalar_one()


def test_reject_names_the_rule(engine, dahu):
    add_rule(engine, "if user == 'bad':\n    reject('go away ' + user)\n", rid=3)
    with pytest.raises(AdmissionRuleError, match=r"^rule 3 failed: go away bad$"):
        C.submit_campaign(engine, JDL, "bad")
    assert n_campaigns(engine) == 0
    assert isinstance(C.submit_campaign(engine, JDL, "good"), int)


def test_rules_can_modify_the_jdl_and_see_params(engine, dahu):
    add_rule(engine, "jdl['clusters']['dahu']['walltime'] = '00:01:00'\n"
                     "if len(params) > 3: jdl['clusters']['dahu']['project'] = 'big-' + params[4]\n")
    cid = C.submit_campaign(engine, JDL, "u")
    with engine.connect() as c:
        props = dict(c.execute(sa.text("SELECT name, value FROM campaign_properties WHERE campaign_id = :c"),
                               {"c": cid}).all())
    assert props["walltime"] == "00:01:00" and props["project"] == "big-4"


def test_rule_producing_an_invalid_jdl(engine, dahu):
    add_rule(engine, "jdl['clusters']['dahu']['walltime'] = 'never'\n")
    with pytest.raises(Exception, match="admission rules produced an invalid JDL.*walltime"):
        C.submit_campaign(engine, JDL, "u")
    assert n_campaigns(engine) == 0


@pytest.mark.parametrize("code,msg", [
    ("1/0\n", r"rule \d+ failed: ZeroDivisionError"),
    ("def (:\n", r"rule \d+ failed: SyntaxError"),
    ("import os\nos._exit(3)\n", r"rule \d+ failed: the rule worker died \(exit status 3\)"),
    ("x = 'a' * (4 * 1024 ** 3)\n", r"rule \d+ failed: out of memory"),
    ("raise SystemExit('bye')\n", r"rule \d+ failed: SystemExit: bye"),
])
def test_crashing_rules_are_clear_errors(engine, dahu, code, msg):
    add_rule(engine, code)
    with pytest.raises(AdmissionRuleError, match=msg):
        C.submit_campaign(engine, JDL, "u")
    assert n_campaigns(engine) == 0


def test_timeout_kills_the_rule_and_its_children():
    marker = f"{random.randint(10**6, 10**7)}.5"  # `sleep <marker>`: findable in /proc whatever its pid
    rule = ("import subprocess\n"
            f"p = subprocess.Popen(['sleep', {marker!r}])\n"
            "while True: pass\n")
    with pytest.raises(AdmissionRuleError, match=r"failed: timed out after 5 s") as e:
        admission.run_rules([(6, "pass"), (7, rule)], {"name": "n"}, "u", {"nb_jobs": 1}, timeout=5)
    # the running rule is named (unless a very loaded machine did not even start the worker)
    assert str(e.value).startswith(("rule 7 failed", "admission rules failed"))
    assert sleepers(marker) == []  # the rule's own child was killed with it


def sleepers(marker):
    """Live processes running `sleep <marker>`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().split(")")[-1].split()[0]
        except (OSError, ValueError):
            continue
        if argv[:2] == [b"sleep", marker.encode()] and state != "Z":
            found.append(int(entry))
    return found


def test_params_view_is_lazy(tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("".join(f"l{i}\n" for i in range(200_000)))
    out = admission.run_rules([(1, "jdl['n'] = len(params)\njdl['h'] = params.head(2)\njdl['last'] = params[-1]\n")],
                              {"name": "n"}, "u", {"param_file": str(pf)}, memory=256 * 1024 * 1024)
    assert out["n"] == 200_000 and out["h"] == ["l0", "l1"] and out["last"] == "l199999"


def test_seed_rule_translation_and_ruby_rules():
    ruby_seed = ('# Title : Filtering users for normal mode on clusters\n'
                 'user_lists = JSON.parse(File.read("/etc/cigri/user_lists"))\n'
                 'jdl["clusters"].each do |cluster|\n'
                 '  if cluster[1]["type"] != "best-effort" and not user_lists["normal_authorized"][cluster[0]]'
                 '.include?(user)\n'
                 '    raise Cigri::AdmissionRuleError.new("You are not authorized ...")\n  end\nend\n')
    new, ok = admission.translate_ruby_rule(ruby_seed)
    assert ok and new == admission.SEED_RULE_1
    other = 'if user == "x"\n  raise "no"\nend\n'
    new, ok = admission.translate_ruby_rule(other)
    assert not ok and new.startswith(admission.DISABLED_MARK) and "#   raise \"no\"" in new
    assert admission.translate_ruby_rule(new) == (new, True)  # idempotent
    assert admission.translate_ruby_rule("x = 1\n") == ("x = 1\n", True)


def test_seed_rule_1_behaviour(tmp_path, monkeypatch):
    """The shipped rule 1 (sql/cigri3.sql) as Python: normal jobs need normal_authorized."""
    jdl = {"name": "n", "clusters": {"dahu": {"type": "normal"}, "luke": {"type": "best-effort"}}}
    with pytest.raises(AdmissionRuleError, match="not authorized to launch non best-effort jobs on cluster dahu"):
        admission.run_rules([(1, admission.SEED_RULE_1)], jdl, "u", {"nb_jobs": 1})
    jdl["clusters"]["dahu"]["type"] = "besteffort"
    assert admission.run_rules([(1, admission.SEED_RULE_1)], jdl, "u", {"nb_jobs": 1}) == jdl


def test_shipped_seed_rule_matches(pg_engine_session):
    """sql/cigri3.sql seeds the same Python code as admission.SEED_RULE_1."""
    from cigri.db.admin import sql_dir
    text = (sql_dir() / "cigri3.sql").read_text()
    assert admission.SEED_RULE_1.replace("'", "''") in text
