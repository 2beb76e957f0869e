"""Errors and CiGri3's log format."""

import logging
import re

import pytest

from cigri.config import Conf
from cigri.errors import CigriError, ConfigError, NotFound, ParseError, Unauthorized
from cigri.log import setup_logging


@pytest.mark.parametrize("cls", [CigriError, NotFound, Unauthorized, ParseError])
def test_errors(cls, tmp_path):
    assert issubclass(cls, CigriError) and issubclass(CigriError, Exception)
    log = setup_logging("TESTLIB", Conf(values={"LOG_FILE": str(tmp_path / "l.log")}), logger="cigri.test6")
    e = cls("something bad", logger=log)
    assert str(e) == "something bad"
    lines = (tmp_path / "l.log").read_text().splitlines()
    assert len(lines) == 1 and "[E]" in lines[0] and "Exception raised" in lines[0]
    assert "something bad" in lines[0] and "[TESTLIB]" in lines[0]


def test_logger_needs_a_progname_and_a_writable_file(tmp_path):
    with pytest.raises(ConfigError):
        setup_logging("", Conf())
    with pytest.raises(ConfigError, match="Cannot open log file"):
        setup_logging("X", Conf(values={"LOG_FILE": str(tmp_path / "no" / "such" / "dir.log")}))
    with pytest.raises(ConfigError, match="unexpected"):
        setup_logging("X", Conf(), colour="red")
    assert setup_logging("X", Conf(values={"LOG_FILE": "STDOUT"}), logger="cigri.test4") is not None


def test_file_format(tmp_path):
    log = setup_logging("RUNNER dahu", Conf(values={"LOG_FILE": str(tmp_path / "f.log")}), logger="cigri.testf")
    log.info("hello %s", "world")
    line = (tmp_path / "f.log").read_text().strip()
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\]\[I\]\[\d+\]\[RUNNER dahu\] hello world", line)


def test_stream_format(capsys):
    log = setup_logging("ALMIGHTY", Conf(values={"LOG_FILE": "STDERR"}), logger="cigri.tests")
    log.warning("careful")
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]\[W\]\[ALMIGHTY\] careful", err)


@pytest.mark.parametrize("level,expected", [
    ("FATAL", ["F"]), ("ERROR", ["F", "E"]), ("WARN", ["F", "E", "W"]),
    ("INFO", ["F", "E", "W", "I"]), ("DEBUG", ["F", "E", "W", "I", "D"]),
])
def test_level_filtering(tmp_path, level, expected):
    path = tmp_path / f"{level}.log"
    log = setup_logging("X", Conf(values={"LOG_FILE": str(path), "LOG_LEVEL": level}), logger=f"cigri.t5{level}")
    log.critical("f")
    log.error("e")
    log.warning("w")
    log.info("i")
    log.debug("d")
    got = [re.match(r"\[[^]]+\]\[(\w)\]", ln).group(1) for ln in path.read_text().splitlines()]
    assert got == expected
    assert logging.getLogger(f"cigri.t5{level}").propagate is False
