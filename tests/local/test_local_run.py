"""`cigri local run`: the whole engine on the embedded SQLite database and the local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.local.conftest import LocalMode, wait_for

pytestmark = pytest.mark.slow


def log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_thousand_task_campaign(local_mode: LocalMode):
    log = local_mode.work / "log"
    task = local_mode.script("task.sh", f'echo "$1" >> {log}\n')
    params = [f"p{i}" for i in range(1000)]
    jdl = local_mode.jdl("thousand", exec_file=task, params=params)
    rc, out = local_mode.run(str(jdl), "--quiet", timeout=600)
    assert rc == 0, out
    assert "Campaign 1 terminated: 1000/1000 tasks done." in out
    assert Counter(log_lines(log)) == Counter(params)  # every task ran, exactly once
    rows = local_mode.query("SELECT count(*), count(DISTINCT param_id) FROM jobs WHERE state='terminated'")
    assert tuple(rows[0]) == (1000, 1000)
    assert (local_mode.work / "OAR.cigri.1.1.stdout").exists() or any(local_mode.work.glob("OAR.cigri.1.*.stdout"))


def test_failing_tasks_give_events_with_stderr_tail(local_mode: LocalMode):
    task = local_mode.script("task.sh", 'if [ "$1" = bad ]; then echo "first line" >&2; echo "boom $1" >&2; '
                                        'exit 3; fi\n')
    jdl = local_mode.jdl("failing", exec_file=task, params=["ok1", "bad", "ok2"])
    rc, out = local_mode.run(str(jdl))
    assert rc == 2, out  # stopped by open events, printed with their stderr tail
    assert "EXIT_ERROR" in out and "boom bad" in out and "gridevents -c 1 -f -r" in out
    [(msg,)] = local_mode.query("SELECT message FROM events WHERE code='EXIT_ERROR' AND state='open'")
    assert "768" in msg and "first line\nboom bad" in msg


def test_gridstat_and_griddel_cancel_kill_running_tasks(local_mode: LocalMode):
    jdl = local_mode.jdl("sleepers", exec_file="sleep", params=["300", "301", "302", "303"])
    p = local_mode.start(str(jdl), "--quiet")
    from cigri.localexec.store import Store

    store = Store(local_mode.data / "local")
    # (a task's pid is written just after it starts)
    wait_for(lambda: len([r for r in store.running_records() if r.get("shepherd")]) == 2, what="two tasks running")
    pids = [r["shepherd"] for r in store.running_records()]
    env = dict(local_mode.env, CIGRICONFFILE=str(local_mode.data / "cigri-local.conf"))
    bindir = Path(sys.executable).parent
    stat = subprocess.run([bindir / "gridstat"], env=env, capture_output=True, text=True, timeout=60)
    assert "sleepers" in stat.stdout, stat.stdout + stat.stderr
    dele = subprocess.run([bindir / "griddel", "-c", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert dele.returncode == 0, dele.stdout + dele.stderr
    assert p.wait(180) == 1 and "was cancelled" in local_mode.output(p)
    wait_for(lambda: not store.running_records(), what="tasks killed")
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or
                 open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", what=f"{pid} gone")
    [(n,)] = local_mode.query("SELECT count(*) FROM jobs WHERE state='terminated'")
    assert n == 0


def test_best_effort_task_preempted_by_normal_campaign_is_resubmitted(local_mode: LocalMode):
    log = local_mode.work / "log"
    be_task = local_mode.script("be.sh", f'echo "start-$1" >> {log}; sleep 4; echo "end-$1" >> {log}\n')
    normal_task = local_mode.script("normal.sh", f'echo "normal-$1" >> {log}\n')
    be = local_mode.jdl("besteffort", exec_file=be_task, params=["a"])
    normal = local_mode.jdl("normal", exec_file=normal_task, params=["n"], cluster={"type": "normal"})
    p = local_mode.start(str(be), "--cores", "1", "--quiet")
    wait_for(lambda: "start-a" in log_lines(log), what="best-effort task started")
    rc, out = local_mode.run(str(normal), "--quiet")  # attaches to the running CiGri
    assert rc == 0 and "Another `cigri local run`" in out, out
    assert p.wait(300) == 0, local_mode.output(p)
    lines = log_lines(log)
    assert lines.count("start-a") == 2 and lines.count("end-a") == 1 and lines.count("normal-n") == 1
    assert lines.index("normal-n") < lines.index("end-a")
    rows = local_mode.query("SELECT message FROM events WHERE code='RESUBMIT' AND campaign_id=1")
    assert rows and "BESTEFFORT_KILL" in rows[0][0]
    assert [tuple(r) for r in local_mode.query("SELECT state FROM jobs WHERE campaign_id=1 ORDER BY id")] == \
        [("event",), ("terminated",)]


def test_restart_mid_campaign_loses_nothing(local_mode: LocalMode):
    log = local_mode.work / "log"
    task = local_mode.script("task.sh", f'sleep 1; echo "$1" >> {log}\n')
    params = [f"t{i}" for i in range(30)]
    jdl = local_mode.jdl("restart", exec_file=task, params=params)
    p = local_mode.start(str(jdl), "--quiet")
    wait_for(lambda: len(log_lines(log)) >= 4, what="some tasks done")
    assert local_mode.interrupt(p) == 130, local_mode.output(p)  # Ctrl-C
    assert "Running tasks go on" in local_mode.output(p)
    rc, out = local_mode.run(str(jdl), "--quiet")
    assert rc == 0 and "Resuming campaign 1" in out, out
    assert Counter(log_lines(log)) == Counter(params)  # none lost, none run twice
    rows = local_mode.query("SELECT count(DISTINCT param_id) FROM jobs WHERE state='terminated' AND campaign_id=1")
    assert rows[0][0] == 30
