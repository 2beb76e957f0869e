"""The `local` batch type against the adapter contract (no database, no engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cigri.clusters.base import ClusterAPINotFound, ExitStatus, JobRequest, Outcome
from tests.local.conftest import ME, wait_ended, wait_for, wait_state

SCRIPT = "sh -c 'echo out$0; i=0; while [ $i -lt 8 ]; do echo err$0-$i >&2; i=$((i+1)); done; exit $0'"


def test_exit_codes_outputs_and_stderr_tail(make_adapter, workdir: Path):
    a = make_adapter()
    ids = a.submit(JobRequest(command=SCRIPT, params=["0", "3"], name="cigri.7", directory=str(workdir)), ME)
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    jobs = wait_ended(a, ids)
    ok, bad = jobs[ids[0]], jobs[ids[1]]
    assert (ok.outcome, ok.exit) == (Outcome.DONE, ExitStatus(code=0))
    assert (bad.outcome, bad.exit) == (Outcome.DONE, ExitStatus(code=3))
    assert bad.exit.wait_status == 768  # what CiGri stores, as CiGri3 did
    assert bad.stdout_file == "cigri.7.out/3.stdout" and bad.launching_directory == str(workdir)
    assert (workdir / bad.stdout_file).read_text() == "out3\n"
    assert bad.owner == ME and bad.command.endswith(" 3") and bad.start_time and bad.stop_time
    tail = a.get_file(bad.output_path("stderr"), ME, tail=5)
    assert tail.splitlines() == [f"err3-{i}" for i in range(3, 8)]
    assert len(a.get_file(bad.output_path("stderr"), ME).splitlines()) == 8
    with pytest.raises(ClusterAPINotFound):
        a.get_file(str(workdir / "nope"), ME)
    a.delete_file(bad.output_path("stdout"), ME)
    assert not (workdir / bad.stdout_file).exists()


def test_output_templates_single_job_and_home(make_adapter, workdir: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(workdir))
    a = make_adapter()
    [jid] = a.submit(JobRequest(command="echo $CIGRI_JOB_ID; pwd", stdout="o.%jobid%", stderr="e.%jobid%"), ME)
    job = wait_ended(a, [jid])[jid]
    assert job.outcome is Outcome.DONE and job.launching_directory == str(workdir)
    assert (workdir / f"o.{jid}").read_text() == f"{jid}\n{workdir}\n"
    sub = workdir / "sub"
    sub.mkdir()
    [j2] = a.submit(JobRequest(command="echo x", directory="$HOME/sub"), ME)
    assert wait_ended(a, [j2])[j2].launching_directory == str(sub)
    assert (sub / f"job.{j2}.stdout").exists()


def test_unknown_job_and_bad_directory(make_adapter, workdir: Path):
    a = make_adapter()
    with pytest.raises(ClusterAPINotFound):
        a.get_job(424242)
    [jid] = a.submit(JobRequest(command="true", directory=str(workdir / "missing")), ME)
    job = wait_ended(a, [jid])[jid]
    assert job.outcome is Outcome.FAILED_TO_START and job.reason == "failed_to_start"


def test_walltime_kills(make_adapter, workdir: Path):
    a = make_adapter()
    [jid] = a.submit(JobRequest(command="sleep 300", walltime="00:00:01", directory=str(workdir)), ME)
    job = wait_ended(a, [jid])[jid]
    assert job.outcome is Outcome.WALLTIME


def test_command_list_exit_and_default_signals(make_adapter, workdir: Path):
    """A task that runs `exit` still reports its code; SIGPIPE and SIGHUP are not inherited
    as ignored from the executor (`yes | head` ends)."""
    a = make_adapter()
    ids = a.submit(JobRequest(command="echo a; exit", params=["5", "0"], directory=str(workdir)), ME)
    pipe = a.submit(JobRequest(command="yes | head -n 2; grep -E '^Sig(Ign|Blk)' /proc/self/status",
                               directory=str(workdir)), ME)
    jobs = wait_ended(a, ids + pipe)
    assert [(jobs[i].outcome, jobs[i].exit) for i in ids] == [(Outcome.DONE, ExitStatus(code=5)),
                                                               (Outcome.DONE, ExitStatus(code=0))]
    p = jobs[pipe[0]]
    assert p.exit == ExitStatus(code=0)
    out = (workdir / p.stdout_file).read_text().splitlines()
    assert out[:2] == ["y", "y"]
    ignored = int(out[2].split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGHUP - 1))


def test_killed_task_gets_grace_to_clean_up(make_adapter, workdir: Path):
    """Deletion sends SIGTERM to the whole task, which stops (no command after the killed one
    runs) but may clean up during the grace delay, as on OAR."""
    a = make_adapter()
    [jid] = a.submit(JobRequest(command="trap 'sleep 0.5; touch cleaned; exit 1' TERM; touch trapped; "
                                        "sleep 300 & wait; touch next", directory=str(workdir)), ME)
    wait_state(a, jid, Outcome.RUNNING)
    wait_for(lambda: (workdir / "trapped").exists(), what="the task's trap set")  # else TERM just ends it
    a.delete_job(jid, ME)
    job = wait_ended(a, [jid])[jid]
    assert job.outcome is Outcome.KILLED
    wait_for(lambda: (workdir / "cleaned").exists(), what="cleanup during the grace delay")
    assert not (workdir / "next").exists()


def test_walltime_in_resources(make_adapter, workdir: Path):
    a = make_adapter()
    [jid] = a.submit(JobRequest(command="sleep 300", resources="/core=1,walltime=0:0:1", directory=str(workdir)),
                     ME)
    assert wait_ended(a, [jid])[jid].outcome is Outcome.WALLTIME


def test_delete_running_and_waiting(make_adapter, workdir: Path):
    a = make_adapter(cores=1)
    ids = a.submit(JobRequest(command="sleep 300; touch", params=["x", "y"], directory=str(workdir)), ME)
    running = wait_state(a, ids[0], Outcome.RUNNING)
    assert a.get_job(ids[1]).outcome is Outcome.WAITING
    assert [r.id for r in a.get_running_jobs()] == [ids[0]]
    assert a.get_running_jobs()[0].resources == [{"id": 1}]
    for i in ids:
        a.delete_job(i, ME)
    jobs = wait_ended(a, ids)
    assert all(j.outcome is Outcome.KILLED for j in jobs.values())
    assert jobs[ids[1]].start_time is None  # never started
    wait_for(lambda: not _alive(running.raw["shepherd"]), what="task killed")
    assert not (workdir / "x").exists() and not (workdir / "y").exists()
    a.delete_job(ids[0], ME)  # already finished: not an error


def test_best_effort_preempted_by_normal(make_adapter, workdir: Path):
    a = make_adapter(cores=1)
    [be] = a.submit(JobRequest(command="sleep 300", types=["besteffort"], directory=str(workdir)), ME)
    wait_state(a, be, Outcome.RUNNING)
    [normal] = a.submit(JobRequest(command="echo done", directory=str(workdir)), ME)
    jobs = wait_ended(a, [be, normal])
    assert jobs[be].outcome is Outcome.PREEMPTED
    assert jobs[be].queue == "besteffort"
    assert (jobs[normal].outcome, jobs[normal].exit) == (Outcome.DONE, ExitStatus(code=0))


def test_best_effort_waits_for_normal(make_adapter, workdir: Path):
    """Best-effort tasks never start before waiting normal ones, and never preempt them."""
    a = make_adapter(cores=1)
    [n1] = a.submit(JobRequest(command="sleep 300", directory=str(workdir)), ME)
    wait_state(a, n1, Outcome.RUNNING)
    [be] = a.submit(JobRequest(command="true", types=["besteffort"], directory=str(workdir)), ME)
    [n2] = a.submit(JobRequest(command="true", directory=str(workdir)), ME)
    assert a.get_job(n1).outcome is Outcome.RUNNING and a.get_job(be).outcome is Outcome.WAITING
    a.delete_job(n1, ME)
    jobs = wait_ended(a, [n1, be, n2])
    assert jobs[be].outcome is jobs[n2].outcome is Outcome.DONE
    assert jobs[be].start_time >= jobs[n2].start_time


def test_resources_and_stress(make_adapter):
    a = make_adapter(cores=3)
    res = a.get_resources()
    assert [r["id"] for r in res] == [1, 2, 3] and {r["state"] for r in res} == {"Alive"}
    assert a.get_stress_factor() == 0.0 and a.check_api()


def test_thousand_tasks_one_call(make_adapter, workdir: Path):
    a = make_adapter()
    ids = a.submit(JobRequest(command="true", params=[f"p{i}" for i in range(1000)], directory=str(workdir)), ME)
    assert ids == list(range(ids[0], ids[0] + 1000))
    assert len(os.listdir(a.store.arrays) + os.listdir(a.store.arrays_done)) >= 2  # array file, not 1000 files
    jobs = wait_ended(a, ids, timeout=300)
    assert all(j.outcome is Outcome.DONE and j.exit == ExitStatus(code=0) for j in jobs.values())
    assert jobs[ids[999]].command == "true p999"
    wait_for(lambda: not a.store.running_records(), what="no task running")
    files = [f for _, _, fs in os.walk(a.store.root) for f in fs]
    assert len(files) < 20, f"no state file per task: {len(files)} files"  # slots, array and its log
    wait_for(lambda: not a.store.active_arrays(), what="array archived")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (executor not reaped yet) is dead for us.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_tasks_survive_killed_submitter_and_executor(make_adapter, workdir: Path, tmp_path: Path):
    """kill -9 the process that submitted, then the executor: tasks finish and are reported."""
    state = tmp_path / "state"
    a = make_adapter(cores=2)  # registers the state dir for cleanup
    submitter = textwrap.dedent(f"""
        import sys, time
        from cigri.clusters.base import ClusterInfo, JobRequest
        from cigri.clusters.local import LocalAdapter
        from cigri.config import Conf
        a = LocalAdapter(ClusterInfo(id=1, name="local", api_url="local://{state}", batch="local"),
                         conf=Conf(values={{"LOCAL_CORES": "2"}}))
        ids = a.submit(JobRequest(command="sleep 2; echo", params=["a", "b", "c", "d"],
                                  directory="{workdir}"), "{ME}")
        print(" ".join(map(str, ids)), flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", submitter], stdout=subprocess.PIPE, text=True)
    ids = [int(x) for x in p.stdout.readline().split()]  # type: ignore[union-attr]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    wait_state(a, ids[0], Outcome.RUNNING)
    ex_pid = a.store.executor_pid()
    assert ex_pid and _alive(ex_pid)
    os.kill(ex_pid, signal.SIGKILL)
    wait_for(lambda: not a.store.executor_running(), what="executor dead")
    # Polling restarts an executor, which adopts the running shepherds and runs the waiting tasks.
    jobs = wait_ended(a, ids)
    assert {j.id: (j.outcome, j.exit) for j in jobs.values()} == {i: (Outcome.DONE, ExitStatus(code=0)) for i in ids}
    assert sorted((workdir / f"job.{i}.stdout").read_text() for i in ids) == ["a\n", "b\n", "c\n", "d\n"]


def test_dead_shepherd_is_reported(make_adapter, workdir: Path):
    a = make_adapter()
    [jid] = a.submit(JobRequest(command="sleep 300", directory=str(workdir)), ME)
    # (the shepherd's pid follows the Running record by an instant)
    job = wait_for(lambda: (j := a.get_job(jid)).outcome is Outcome.RUNNING and j.raw.get("shepherd") and j,
                   what="shepherd pid")  # type: ignore[assignment]
    a.store.stop_executor()  # nobody reaps: the adapter itself must notice
    os.kill(job.raw["shepherd"], signal.SIGKILL)
    wait_for(lambda: not _alive(job.raw["shepherd"]), what="shepherd dead")
    job = wait_ended(a, [jid])[jid]
    assert job.outcome is Outcome.LOST


def test_executor_wakes_the_runner_when_it_runs_low_and_when_work_is_over(make_adapter, workdir: Path):
    """The runner sleeps on the adapter's wake-up fd: the executor writes to it when it is
    about to run out of tasks (submit more) and when everything has ended (record it)."""
    import select

    a = make_adapter(cores=2)
    fd = a.wakeup_fd()
    assert fd is not None

    def wait_wake() -> None:
        ready, _, _ = select.select([fd], [], [], 120)
        assert ready, "no wake-up from the executor"
        while True:
            try:
                if not os.read(fd, 4096):
                    break
            except BlockingIOError:
                break

    ids = a.submit(JobRequest(command="sleep 1; echo", params=["a", "b"], directory=str(workdir)), ME)
    wait_wake()  # two tasks started on two cores, none waiting: it runs low
    assert {j.outcome for j in a.get_jobs(ids).values()} <= {Outcome.WAITING, Outcome.RUNNING}
    wait_wake()  # all over
    assert {j.outcome for j in a.get_jobs(ids).values()} == {Outcome.DONE}


def test_outputs_in_one_directory_per_campaign_named_by_task_and_never_empty(make_adapter, workdir: Path):
    a = make_adapter()
    ids = a.submit(JobRequest(command="sh -c 'echo result $0; [ $0 = quiet ] || echo warn >&2'",
                              params=["alpha", "quiet", "../evil"], name="cigri.7", directory=str(workdir)), ME)
    jobs = wait_ended(a, ids)
    out = workdir / "cigri.7.out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["alpha.stdout", "alpha.stderr", "quiet.stdout", "_.._evil.stdout", "_.._evil.stderr"])
    assert (out / "alpha.stdout").read_text() == "result alpha\n"
    assert not (out / "quiet.stderr").exists()  # it wrote nothing there
    assert jobs[ids[0]].output_path("stdout") == str(out / "alpha.stdout")
    assert not list(workdir.glob("OAR.*"))


def test_a_task_is_seen_ended_only_once_its_outputs_are_in_place(tmp_path: Path):
    """The shepherd writes the status, the executor then moves the outputs out of the slot:
    until it has, readers see the task running (its output would be missing otherwise)."""
    from cigri.localexec.store import read_task_file

    slot = tmp_path / "1"
    slot.write_text('{"id": 5, "state": "running", "start_time": 1}\nP 123\n0\n')
    Path(f"{slot}.out").write_text("result\n")
    rec, ended = read_task_file(str(slot))
    assert rec is not None and rec["state"] == "running" and not ended and "exit_code" not in rec
    assert read_task_file(str(slot), raw=True)[1]  # the executor sees the status itself
    Path(f"{slot}.out").rename(tmp_path / "task.stdout")
    rec, ended = read_task_file(str(slot))
    assert ended and rec is not None and rec["exit_code"] == 0
