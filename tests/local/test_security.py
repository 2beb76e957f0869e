"""A `local` cluster on a shared machine (#10 item 2): it runs the tasks of its own user
only, serves a task's output only as a regular file of its owner reached without links,
and keeps its state directory (every task's command and parameters) private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cigri.clusters.base import ClusterAPIForbidden, JobRequest
from tests.local.conftest import ME, wait_ended


def test_tasks_of_another_user_are_refused(make_adapter, workdir: Path):
    a = make_adapter()
    other = "nobody" if ME != "nobody" else "root"
    with pytest.raises(ClusterAPIForbidden, match=f"runs tasks as {ME} only"):
        a.submit(JobRequest(command="true", directory=str(workdir)), other)
    assert not list(a.store.arrays.glob("*.json"))  # nothing queued


def test_a_mapped_grid_login_runs_as_its_local_account(make_adapter, workdir: Path):
    a = make_adapter()
    a.set_mapping({"alice@grid": ME})
    [jid] = a.submit(JobRequest(command="echo ok", directory=str(workdir)), "alice@grid")
    job = wait_ended(a, [jid])[jid]
    assert a.get_file(job.output_path("stdout"), "alice@grid") == "ok\n"


def test_output_replaced_by_a_link_is_not_served(make_adapter, workdir: Path, tmp_path: Path):
    a = make_adapter()
    secret = tmp_path / "secret"
    secret.write_text("private\n")
    [jid] = a.submit(JobRequest(command="echo out; echo err >&2", directory=str(workdir)), ME)
    job = wait_ended(a, [jid])[jid]
    out, err = Path(job.output_path("stdout")), Path(job.output_path("stderr"))
    out.unlink()
    out.symlink_to(secret)  # what a task can do to its own output
    with pytest.raises(ClusterAPIForbidden):
        a.get_file(str(out), ME)
    err.unlink()
    err.symlink_to("/etc/passwd")
    with pytest.raises(ClusterAPIForbidden):
        a.get_file(str(err), ME, tail=5)


def test_output_of_another_owner_or_not_a_regular_file_is_not_served(make_adapter, workdir: Path):
    a = make_adapter()
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ClusterAPIForbidden):
        a.get_file(str(fifo), ME)  # (a FIFO would hang the reader)
    if os.geteuid() == 0:
        theirs = workdir / "theirs"
        theirs.write_text("x")
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ClusterAPIForbidden, match="does not belong"):
            a.get_file(str(theirs), ME)


def test_state_directory_is_private(make_adapter, workdir: Path):
    a = make_adapter()
    a.store.root.mkdir(mode=0o755)
    os.chmod(a.store.root, 0o755)
    [jid] = a.submit(JobRequest(command="true", params=["secret-parameter"], directory=str(workdir)), ME)
    wait_ended(a, [jid])
    for d in (a.store.root, a.store.arrays, a.store.slots, a.store.ctl):
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, d
