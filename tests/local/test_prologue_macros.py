"""Macros of prologue and epilogue lines (~, {HOME}, {CAMPAIGN_ID}) reach the shell that runs
them as the user's home and the campaign's id, not as the literal text `$HOME`."""

from __future__ import annotations

import os

import pytest

from tests.local.conftest import LocalMode

pytestmark = pytest.mark.slow


def test_prologue_and_epilogue_macros_are_expanded(local_mode: LocalMode) -> None:
    out = local_mode.work / "macros"
    jdl = local_mode.jdl("macros", exec_file="/bin/true", params=["a"],
                         prologue=[f"echo pro {{CAMPAIGN_ID}} ~ {{HOME}} >> {out}"],
                         epilogue=[f"echo epi {{CAMPAIGN_ID}} ~ >> {out}"])
    rc, text = local_mode.run(str(jdl), "--quiet")
    assert rc == 0, text
    home = os.environ["HOME"]
    assert out.read_text() == f"pro 1 {home} {home}\nepi 1 {home}\n"
