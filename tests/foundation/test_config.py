"""Configuration and the shipped configuration files."""

from pathlib import Path

import pytest

from cigri import config
from cigri.config import Conf, get_conf, set_conf
from cigri.errors import CigriError, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_missing_file_is_a_cigri_error(tmp_path):
    with pytest.raises(CigriError, match="Unable to open config file"):
        Conf(tmp_path / "nope.conf")


def test_existing_file(tmp_path):
    p = tmp_path / "cigri.conf"
    p.write_text('# comment\nINSTALL_PATH = "/usr/local/share/cigri/"\nLOG_LEVEL="DEBUG"\n\n')
    c = Conf(p)
    assert not c.exists("Obiwankenobi")
    assert c.exists("INSTALL_PATH")
    assert isinstance(c.get("INSTALL_PATH"), str)
    assert c.scan() == 2
    assert c.get("Obiwankenobi") is None


def test_global_conf_is_a_singleton(tmp_path, monkeypatch):
    p = tmp_path / "cigri.conf"
    p.write_text('LOG_LEVEL = "WARN"\n')
    monkeypatch.setenv("CIGRICONFFILE", str(p))
    set_conf(None)
    try:
        a, b = get_conf(), get_conf()
        assert a is b and isinstance(a, Conf) and a.get("LOG_LEVEL") == "WARN"
    finally:
        set_conf(None)


@pytest.mark.parametrize("text,expect", [
    ('FOO = "1"\n', r"c\.conf:1: unknown variable FOO"),
    ('# x\nLOG_LEVEL "INFO"\n', r"c\.conf:2: malformed line"),
    ('STDERR_TAIL = "five"\n', r"c\.conf:1: bad value for STDERR_TAIL"),
    ('LOG_LEVEL = "LOUD"\n', r"c\.conf:1: bad value for LOG_LEVEL"),
    ('LOG_FILE = "unterminated\n', r"c\.conf:1: bad value for LOG_FILE"),
])
def test_bad_lines_are_refused_with_file_and_line(tmp_path, text, expect):
    p = tmp_path / "c.conf"
    p.write_text(text)
    with pytest.raises(ConfigError, match=expect):
        Conf(p)


def test_unquoted_values_are_accepted(tmp_path):
    """CiGri3 silently ignored STDERR_TAIL = 5."""
    p = tmp_path / "c.conf"
    p.write_text("STDERR_TAIL = 7\nLOG_FILE = /tmp/x.log # trailing comment\n")
    c = Conf(p)
    assert c.get("STDERR_TAIL") == 7
    assert c.get("LOG_FILE") == "/tmp/x.log"


def test_shipped_cigri_conf_has_every_variable_with_its_default():
    c = Conf(ROOT / "conf" / "cigri.conf")
    missing = [n for n in config.VARIABLES if not c.exists(n)]
    assert not missing, f"conf/cigri.conf lacks {missing}: run .venv/bin/python tests/foundation/gen_conf.py"
    for name, var in config.VARIABLES.items():
        assert c.get(name) == var.default, name


def test_shipped_api_clients_conf_loads():
    c = Conf(ROOT / "conf" / "api-clients.conf")
    assert c.get("API_BASE") == "/cigri-api"
