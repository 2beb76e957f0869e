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
    assert not list(local_mode.work.glob("OAR.*"))  # outputs: one directory, no empty file
    assert not (local_mode.work / "cigri.1.out").exists() or not any((local_mode.work / "cigri.1.out").iterdir())


def test_failures_are_explained_listed_and_rerun_alone(local_mode: LocalMode):
    log = local_mode.work / "log"
    flag = local_mode.work / "fixed"
    task = local_mode.script("task.sh", f'echo "$1" >> {log}\n'
                                        f'if [ "$1" = bad ] && [ ! -e {flag} ]; then echo "first line" >&2; '
                                        'echo "boom $1" >&2; exit 3; fi\n')
    jdl = local_mode.jdl("failing", exec_file=task, params=["ok1", "bad", "ok2"])
    rc, out = local_mode.run(str(jdl))
    assert rc == 2, out  # stopped by its failure: why, which task, what to type
    assert "Campaign 1 stopped: 1 tasks failed" in out, out
    assert "task bad failed: exit code 3 | boom bad" in out and "768" not in out.replace("exit status 768", "")
    assert f"cigri local run {jdl} --rerun-failed" in out and "cigri local summary 1" in out
    [(msg,)] = local_mode.query("SELECT message FROM events WHERE code='EXIT_ERROR' AND state='open'")
    assert "768 (exit code 3)" in msg and "first line\nboom bad" in msg
    r = local_mode.cli("summary", "1")
    assert r.returncode == 1 and "1 failed" in r.stdout and "task bad failed: exit code 3" in r.stdout, r.stdout
    assert "boom bad" in r.stdout
    # The run is over, its API gone: the grid* commands still answer (the API starts on demand).
    stat = local_mode.grid("gridstat", "-c", "1", "-f")
    assert stat.returncode == 0 and "event,local,bad,bad" in stat.stdout, stat.stdout + stat.stderr
    ev = local_mode.grid("gridevents", "-c", "1")
    assert ev.returncode == 0 and "EXIT_ERROR" in ev.stdout, ev.stdout + ev.stderr
    [(bad_job,)] = local_mode.query("SELECT j.id FROM jobs j JOIN parameters p ON p.id = j.param_id "
                                    "WHERE p.name = 'bad'")
    err = local_mode.grid("gridstat", "-j", str(bad_job), "-E")
    assert err.returncode == 0 and "boom bad" in err.stdout, err.stdout + err.stderr
    rc, out = local_mode.run(str(jdl))  # the same JDL again: says what happened, runs nothing
    assert rc == 1 and "--rerun-failed" in out and "--new" in out, out
    flag.touch()
    rc, out = local_mode.run(str(jdl), "--rerun-failed")
    assert rc == 0 and "Campaign 1 terminated: 3/3 tasks done." in out, out
    assert Counter(log_lines(log)) == Counter({"ok1": 1, "ok2": 1, "bad": 2})  # only the failed one again


def test_ctrl_c_starts_no_new_task_and_a_second_run_resumes(local_mode: LocalMode):
    log = local_mode.work / "log"
    task = local_mode.script("task.sh", f'echo "start-$1" >> {log}; sleep 2; echo "end-$1" >> {log}\n')
    params = [f"t{i}" for i in range(12)]
    jdl = local_mode.jdl("ctrlc", exec_file=task, params=params)
    p = local_mode.start(str(jdl), "--quiet", "--cores", "2")
    wait_for(lambda: log_lines(log).count("end-t0") + log_lines(log).count("end-t1") >= 1, what="a task done")
    assert local_mode.interrupt(p) == 130, local_mode.output(p)
    out = local_mode.output(p)
    assert "no new task starts; running tasks go on" in out, out
    from cigri.localexec.store import Store

    store = Store(local_mode.data / "local")
    assert not store.executor_running()
    wait_for(lambda: not store.running_records(), what="running tasks to end")
    started = [x for x in log_lines(log) if x.startswith("start-")]
    ended = [x for x in log_lines(log) if x.startswith("end-")]
    assert len(ended) == len(started) < len(params)  # the running ones ended; none started since
    rc, out = local_mode.run(str(jdl), "--quiet")
    assert rc == 0 and "Resuming campaign 1" in out, out
    lines = log_lines(log)
    assert Counter(x for x in lines if x.startswith("end-")) == Counter(f"end-{t}" for t in params)
    assert len([x for x in lines if x.startswith("start-")]) == len(params)  # nothing ran twice


def test_missing_or_non_executable_exec_file_is_refused_at_submission(local_mode: LocalMode):
    missing = local_mode.jdl("missing", exec_file=str(local_mode.root / "nope.sh"), params=["a"])
    rc, out = local_mode.run(str(missing))
    assert rc == 1 and out.strip() == f"cigri: {missing}: exec_file: {local_mode.root / 'nope.sh'}: no such file"
    plain = local_mode.root / "plain.sh"
    plain.write_text("echo\n")
    noexec = local_mode.jdl("noexec", exec_file=str(plain), params=["a"])
    rc, out = local_mode.run(str(noexec))
    assert rc == 1 and "not executable (chmod +x" in out and "Traceback" not in out
    rc, out = local_mode.run(str(local_mode.jdl("nocmd", exec_file="no-such-command-xyz", params=["a"])))
    assert rc == 1 and "no-such-command-xyz: command not found in PATH" in out
    assert not (local_mode.data / "cigri.sqlite").exists() or not local_mode.query("SELECT id FROM campaigns")


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
    assert rows and "BESTEFFORT_KILL" in rows[0][0]  # (CiGri3's cause for a preempted job)
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
    assert "running tasks go on" in local_mode.output(p)
    rc, out = local_mode.run(str(jdl), "--quiet")
    assert rc == 0 and "Resuming campaign 1" in out, out
    assert Counter(log_lines(log)) == Counter(params)  # none lost, none run twice
    rows = local_mode.query("SELECT count(DISTINCT param_id) FROM jobs WHERE state='terminated' AND campaign_id=1")
    assert rows[0][0] == 30
