"""Pieces of the commands that need no server: the two ways gridsub sends a param_file,
and CiGri3's output formats."""

from __future__ import annotations

import json
from pathlib import Path

from cigri.cli.formats import campaign_line, progress
from cigri.cli.gridclusters import usage_bar
from cigri.cli.gridsub import _jdl_with_params, _stream_jdl


def test_streamed_and_in_memory_bodies_agree(tmp_path: Path) -> None:
    pf = tmp_path / "p.txt"
    pf.write_text('a 1\n  b "2"  \n\n\u00e9 3\n')
    jdl = {"name": "n", "param_file": str(pf), "clusters": {"c": {"exec_file": "e"}}}
    gen, _ = _stream_jdl(jdl, str(pf))
    streamed = json.loads(b"".join(gen))
    in_memory = json.loads(_jdl_with_params(jdl, str(pf)))
    assert streamed == in_memory
    assert streamed["params"] == ["a 1", 'b "2"', "\u00e9 3"] and "param_file" not in streamed


def test_campaign_line_format() -> None:
    c = {"id": 12, "name": "a-very-long-campaign-name", "user": "someone-with-a-long-name", "state": "paused",
         "has_events": True, "submission_time": None, "finished_jobs": 1, "total_jobs": 3}
    line = campaign_line(c)
    assert line.startswith("12          a-very-long-campaig someone-with-a-l ")
    assert line.endswith(" Pe 1/3 (33%)")
    assert progress(0, 0) == "0/0 (0%)"


def test_usage_bar_is_80_columns() -> None:
    import click

    bar = click.unstyle(usage_bar({"max_resources": 80, "used_resources": 40, "used_by_cigri": 20,
                                   "unavailable_resources": 8}))
    assert len(bar) == 80
