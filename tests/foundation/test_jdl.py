"""JDL parser, validator and expander, and bad inputs."""

import json
import os

import pytest

from cigri import jdl as J
from cigri.config import Conf
from cigri.errors import ParseError
from cigri.run_options import RunOptions

CONF = Conf(values={"DEFAULT_JOB_RESOURCES": "/core=1", "DEFAULT_JOB_WALLTIME": "02:00:00",
                    "DEFAULT_MAX_RESUBMIT": "7"})
USER = "root"


def expand(d, known=None):
    return J.expand_jdl(d, CONF, USER, known)


@pytest.mark.parametrize("jdl", [
    {"name": "n", "nb_jobs": 1, "clusters": {"dahu": {"exec_file": "e"}}},
    {"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"dahu": {}}},
    {"name": "n", "jobs_type": "desktop_computing", "exec_file": "e", "clusters": {"dahu": {}}},
    '{"name": "n", "params": ["a"], "exec_file": "e", "clusters": {"dahu": null}}',
])
def test_valid_minimal(jdl):
    assert J.parse_jdl(jdl)["name"] == "n"


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("jdl,msg", [
    ({"nb_jobs": 1, "exec_file": "e", "clusters": {"d": {}}}, "mandatory field 'name'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e"}, "mandatory field 'clusters'"),
    ({"name": "n", "nb_jobs": 1, "clusters": {"d": {}}}, "Cluster 'd' does not have mandatory field 'exec_file'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {}}, "at least one cluster"),
    ({"name": "", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {}}}, "mandatory field 'name'"),
    ({"name": "  ", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {}}}, "'name' must be a non-empty string"),
    ({"name": 3, "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {}}}, "'name' must be a non-empty string"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "", "clusters": {"d": {}}}, "'exec_file' is empty"),
    ({"name": "n", "nb_jobs": 1, "clusters": {"d": {"exec_file": " "}}}, "'exec_file' of cluster 'd' is empty"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": ["d"]}, "'clusters' must be an object"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"": {}}}, "empty name"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": 3}}, "Cluster 'd' must be an object"),
    ({"name": "n", "nb_jobs": -1, "exec_file": "e", "clusters": {"d": {}}}, "'nb_jobs' must be a non-negative"),
    ({"name": "n", "nb_jobs": 1.5, "exec_file": "e", "clusters": {"d": {}}}, "'nb_jobs' must be a non-negative"),
    ({"name": "n", "nb_jobs": True, "exec_file": "e", "clusters": {"d": {}}}, "'nb_jobs' must be a non-negative"),
    ({"name": "n", "nb_jobs": "ten", "exec_file": "e", "clusters": {"d": {}}}, "'nb_jobs' must be a non-negative"),
    ({"name": "n", "nb_jobs": 10**12, "exec_file": "e", "clusters": {"d": {}}}, "'nb_jobs' is too large"),
    ({"name": "n", "params": "a b", "exec_file": "e", "clusters": {"d": {}}}, "'params' must be an array"),
    ({"name": "n", "params": ["a", {"x": 1}], "exec_file": "e", "clusters": {"d": {}}}, "element 1"),
    ({"name": "n", "param_file": "", "exec_file": "e", "clusters": {"d": {}}}, "'param_file' must be a non-empty"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "walltime": "soon", "clusters": {"d": {}}}, "'walltime'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {"walltime": ""}}}, "'walltime' of cluster"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {"type": "fast"}}}, "'type' of cluster 'd'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {"max_jobs": 0}}}, "'max_jobs'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {"max_jobs": "x"}}}, "'max_jobs'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "max_resubmit": -2, "clusters": {"d": {}}}, "'max_resubmit'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "test_mode": "maybe", "clusters": {"d": {}}}, "'test_mode'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "prologue": [1], "clusters": {"d": {}}}, "'prologue'"),
    ({"name": "n", "nb_jobs": 1, "exec_file": 5, "clusters": {"d": {}}}, "'exec_file' must be a string"),
    ({"name": "n", "nb_jobs": 1, "exec_file": "e", "jobs_type": "weird", "clusters": {"d": {}}}, "'jobs_type'"),
    ("", "JDL badly defined"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"just a string"', "expected a JSON object"),
    ("{'name': 1}", "JDL badly defined"),
    (b"\xff\xfe", "not UTF-8"),
    ("[" * 100000, "JDL badly defined"),
    (42, "expected a JSON object"),
])
def test_bad_input_gives_one_clear_message(jdl, msg):
    with pytest.raises(ParseError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as e:
        J.parse_jdl(jdl)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("param_file", "/etc/hostname"), ("params", ["a"]), ("nb_jobs", 0)])
def test_each_param_source_suffices(field, value):
    J.parse_jdl({"name": "n", field: value, "exec_file": "e", "clusters": {"d": {}}})


def test_no_params_is_refused():
    with pytest.raises(ParseError, match="No parameters for your campaign are defined"):
        J.parse_jdl({"name": "n", "exec_file": "e", "clusters": {"d": {}}})


# ---------------------------------------------------------------- defaults / macros
def test_expansion_and_defaults():
    e = expand({"name": "n", "nb_jobs": 3, "exec_file": "e", "walltime": "00:10:00", "project": "",
                "clusters": {"dahu": {"exec_file": "toto", "max_jobs": 50}, "luke": {"type": "normal"}}})
    assert "exec_file" not in e and "walltime" not in e
    assert e["clusters"]["dahu"]["exec_file"] == "toto"
    assert e["clusters"]["luke"]["exec_file"] == "e"
    luke = e["clusters"]["luke"]
    assert luke["walltime"] == "00:10:00" and luke["resources"] == "/core=1"
    assert luke["type"] == "normal" and e["clusters"]["dahu"]["type"] == "best-effort"
    assert luke["project"] == ""  # an empty string is a value (not replaced by a default)
    assert luke["max_resubmit"] == 7 and luke["exec_directory"] == "$HOME"
    assert e["jobs_type"] == "normal"


def test_spec_4_4_stored_example():
    e = expand({"name": "n", "nb_jobs": 3, "exec_file": "{HOME}/run.sh", "walltime": "00:10:00",
                "clusters": {"dahu": {"max_jobs": 50}, "luke": {"type": "normal", "project": "p"}}})
    st = J.stored_jdl(e, 3)
    assert st["params"] == [] and st["params_count"] == 3 and "nb_jobs" not in st
    dahu = st["clusters"]["dahu"]
    assert dahu == {"max_jobs": 50, "type": "best-effort", "exec_directory": "$HOME",
                    "output_gathering_method": "None", "dimensional_grouping": "false",
                    "temporal_grouping": "false", "checkpointing_type": "None", "test_mode": "false",
                    "properties": "", "project": "", "cluster_job_type": "", "resources": "/core=1",
                    "exec_file": "$HOME/run.sh", "walltime": "00:10:00", "max_resubmit": 7}
    json.dumps(st)


def test_macros():
    e = expand({"name": "n", "nb_jobs": 1, "exec_file": "~/bin/x {CAMPAIGN_ID}",
                "exec_directory": "{HOME}/r/{CAMPAIGN_ID}",
                "prologue": ["cd ~/{CAMPAIGN_ID}", "echo {OAR_JOB_ID} {HOME}"], "epilogue": "echo bye",
                "clusters": {"d": {}}})
    d = e["clusters"]["d"]
    assert d["exec_file"] == "$HOME/bin/x \\$CIGRI_CAMPAIGN_ID"
    assert d["exec_directory"] == "$HOME/r/{CAMPAIGN_ID}"
    assert d["prologue"] == ["cd \\$HOME/\\$CIGRI_CAMPAIGN_ID", "echo \\$OAR_JOB_ID \\$HOME"]
    assert d["epilogue"] == ["echo bye"]


def test_test_mode_forces_max_jobs_and_properties():
    e = expand({"name": "n", "nb_jobs": 1, "exec_file": "e", "test_mode": True, "max_jobs": 40,
                "prologue": ["a", "b"], "temporal_grouping": "TRUE", "clusters": {"d": {}, "x": {"test_mode": False}}})
    p = J.cluster_properties(e, "d")
    assert p["test_mode"] == "true" and p["max_jobs"] == "1" and p["prologue"] == "a\nb"
    assert p["temporal_grouping"] == "true" and p["max_resubmit"] == "7"
    assert J.cluster_properties(e, "x")["max_jobs"] == "40"
    assert RunOptions.for_task(p) == RunOptions(besteffort=False, temporal_grouping=True)
    assert set(p) <= set(J.PROPERTY_NAMES)


@pytest.mark.parametrize("props,opts", [
    ({"type": "best-effort"}, {"besteffort": True}),
    ({"type": "besteffort"}, {"besteffort": True}),
    ({"type": "normal"}, {"besteffort": False}),
    ({"type": "semi-best-effort"}, {"besteffort": True, "semi_best_effort": True}),
    ({"type": "nightly", "dimensional_grouping": "true"},
     {"besteffort": False, "nightly": True, "dimensional_grouping": True}),
    ({"type": "best-effort", "test_mode": "true"}, {"besteffort": False}),
])
def test_runner_options(props, opts):
    """The one model of run options (cigri.run_options): built from the properties, stored as
    CiGri3's runner_options JSON, read back identical."""
    built = RunOptions.for_task(props)
    assert json.loads(built.to_json()) == opts
    assert RunOptions.stored(built.to_json()) == built


def test_stored_runner_options_of_cigri3_and_older_rows():
    assert RunOptions.stored('{"besteffort":"false"}') == RunOptions(besteffort=False)
    assert RunOptions.stored('{"besteffort":true,"batch_id":12}').batch_id == 12
    assert RunOptions.stored('{"campaign_type":"nightly"}').nightly
    assert RunOptions.stored("not json") == RunOptions() == RunOptions.stored(None)
    assert RunOptions.for_task({"type": "semi-best-effort"}, bag_priority=20).besteffort is False


def test_unknown_clusters_only():
    with pytest.raises(ParseError, match="No clusters usable"):
        expand({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"nowhere": {}}}, known={"dahu": 1})


def test_missing_default_in_conf_names_variable():
    from cigri.errors import NotFound
    with pytest.raises(NotFound, match="DEFAULT_JOB_WALLTIME"):
        J.expand_jdl({"name": "n", "nb_jobs": 1, "exec_file": "e", "clusters": {"d": {}}},
                     Conf(values={"DEFAULT_JOB_WALLTIME": ""}) if False else _conf_without_walltime(), USER)


def _conf_without_walltime():
    c = Conf()
    c._typed["DEFAULT_JOB_WALLTIME"] = ""
    return c


# ---------------------------------------------------------------- params
def test_nb_jobs():
    e = expand({"name": "n", "nb_jobs": 10, "exec_file": "e", "clusters": {"d": {}}})
    assert list(J.iter_param_lines(e)) == [str(i) for i in range(10)]
    assert [n for n, _ in J.iter_named_params(e)] == [str(i) for i in range(10)]
    assert "nb_jobs" not in J.stored_jdl(e, 10)


def test_param_file_stripped_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", os.path.expanduser("~"))
    pf = tmp_path / "p.txt"
    pf.write_text("param 1\n param 2    \n    param3")
    e = expand({"name": "n", "param_file": str(pf), "exec_file": "e", "clusters": {"d": {}}})
    assert list(J.iter_param_lines(e)) == ["param 1", "param 2", "param3"]
    assert list(J.iter_named_params(e)) == [("param", "param 1"), ("param", "param 2"), ("param3", "param3")]
    home = os.path.expanduser("~")
    hp = os.path.join(home, f".cigri-test-{os.getpid()}.txt")
    with open(hp, "w") as f:
        f.write("a\n")
    try:
        for spec in ("~/" + os.path.basename(hp), "$HOME/" + os.path.basename(hp), "{HOME}/" + os.path.basename(hp)):
            e = expand({"name": "n", "param_file": spec, "exec_file": "e", "clusters": {"d": {}}})
            assert e["param_file"] == hp
    finally:
        os.unlink(hp)


def test_param_file_errors(tmp_path, monkeypatch):
    base = {"name": "n", "exec_file": "e", "clusters": {"d": {}}}
    with pytest.raises(ParseError, match="is not readable"):
        expand(base | {"param_file": str(tmp_path / "missing")})
    with pytest.raises(ParseError, match="not a regular file"):
        expand(base | {"param_file": str(tmp_path)})
    monkeypatch.delenv("CIGRI_NOPE", raising=False)
    with pytest.raises(ParseError, match=r"\$CIGRI_NOPE is not set"):
        expand(base | {"param_file": "$CIGRI_NOPE/x"})
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok 1\nok 2\n\xff\xfe broken\n")
    e = expand(base | {"param_file": str(bad)})
    with pytest.raises(ParseError, match="line 3: not valid UTF-8"):
        list(J.iter_named_params(e))
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"a\nb\x00c\n")
    e = expand(base | {"param_file": str(nul)})
    with pytest.raises(ParseError, match="line 2 of parameter file .* NUL"):
        list(J.iter_named_params(e))
    long = tmp_path / "long.txt"
    long.write_text("x\n" + "y" * 300 + " arg\n")
    e = expand(base | {"param_file": str(long)})
    with pytest.raises(ParseError, match="line 2 of parameter file .* longer than 255"):
        list(J.iter_named_params(e))


def test_unknown_user_home():
    with pytest.raises(ParseError, match="Unknown user 'no-such-user-xyz'"):
        J.expand_jdl({"name": "n", "param_file": "~/p", "exec_file": "e", "clusters": {"d": {}}}, CONF,
                     "no-such-user-xyz")


def test_params_list_elements():
    e = expand({"name": "n", "params": ["a 1", 7, " b  "], "exec_file": "e", "clusters": {"d": {}}})
    assert list(J.iter_named_params(e)) == [("a", "a 1"), ("7", "7"), ("b", "b")]
    e = expand({"name": "n", "params": ["a\nb"], "exec_file": "e", "clusters": {"d": {}}})
    with pytest.raises(ParseError, match="element 0 of 'params' contains a line break"):
        list(J.iter_named_params(e))


def test_parse_is_idempotent_and_lowercases_keys():
    p = J.parse_jdl({"NAME": "n", "Nb_Jobs": 2, "EXEC_FILE": "e", "Clusters": {"d": {"WallTime": 600}}})
    assert p["clusters"]["d"]["walltime"] == "00:10:00"
    assert J.parse_jdl(p) == p
