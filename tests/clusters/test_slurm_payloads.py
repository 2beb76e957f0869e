"""What the slurm adapter sends and how it reads Slurm's records, without a cluster: the
task script run by bash as Slurm would run it (exact parameter lines, the stderr tail it
leaves in the job comment), the submissions (arrays split by size and key length, partition
and QOS of best-effort and normal jobs, resources), and the translation table. The same
behaviour against the real slurmrestd: tests/clusters/test_slurm_live.py."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cigri.clusters.base import ClusterAPIBadRequest, ClusterInfo, ExitStatus, JobRequest, Outcome
from cigri.clusters.slurm import (
    KEY_MAX,
    MAX_ARRAY,
    PARAMS_END,
    SlurmAdapter,
    _record_of,
    key_of,
    parse_array_spec,
    slurm_outcome,
    slurm_resources,
    task_line,
    task_script,
)
from cigri.config import Conf

PARAMS = ["1", "1 0", '"two words" x', "'a;b|c&d>e' f", "'$HOME' '`id`'", r"x\ y", "a#b", "é 日本", r"\$HOME/z",
          "", "  spaced  ", "$(echo sub)"]


def adapter(**kw: Any) -> SlurmAdapter:
    return SlurmAdapter(ClusterInfo(id=1, name="sl", api_url="http://127.0.0.1:9/", batch="slurm", **kw))


def run_task(tmp_path: Path, script: str, index: int) -> tuple[int, str]:
    """Run a task script as slurmstepd would for array task `index`; a stand-in scontrol
    records the comment the script sets. Returns (exit status, recorded comment)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text('#!/bin/bash\nv="${@: -1}"\nprintf "%s" "${v#Comment=}" > "$CIGRI_TEST_NOTE"\n')
    (fake / "scontrol").chmod(0o755)
    note = tmp_path / f"note.{index}"
    note.unlink(missing_ok=True)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(index), "SLURM_ARRAY_JOB_ID": "77",
           "SLURM_JOB_ID": str(100 + index), "CIGRI_TEST_NOTE": str(note)}
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return r.returncode, note.read_text() if note.exists() else ""


def bash_args(line: str, cwd: Path) -> str:
    """What bash makes of the task line (HOME as the task script sets it)."""
    home = subprocess.run(["bash", "-c", 'getent passwd "$(id -u)" | cut -d: -f6'], capture_output=True,
                          text=True).stdout.strip()
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "HOME": home}).stdout


@pytest.mark.parametrize("trap", [False, True], ids=["here-document", "one-quoted-line-per-task"])
def test_each_array_task_runs_exactly_its_line(tmp_path: Path, trap: bool) -> None:
    exe = tmp_path / "args.sh"
    exe.write_text('#!/bin/bash\nprintf "[%s]" "$@"\n')
    exe.chmod(0o755)
    params = PARAMS + ([PARAMS_END] if trap else [])
    req = JobRequest(command=f"export CIGRI_CAMPAIGN_ID=3;{exe}", params=params, name="cigri.3",
                     directory=str(tmp_path), job_ids=list(range(10, 10 + len(params))))
    script = task_script(req, "cigri:10-22", 5)
    assert (f"<<'{PARAMS_END}'" in script) is not trap
    for i, p in enumerate(params):
        rc, note = run_task(tmp_path, script, i)
        out = (tmp_path / f"cigri.3.77_{i}.stdout").read_text()
        assert rc == 0 and note == "", (p, rc, note)
        assert out == bash_args(f'printf "[%s]" {task_line("", p)}', tmp_path), p
    rc, _ = run_task(tmp_path, script, len(params))  # no such line: the task fails, runs nothing
    assert rc == 1


def test_a_failing_task_leaves_its_stderr_tail_in_its_comment(tmp_path: Path) -> None:
    cmd = "for i in $(seq 1 9); do echo line$i >&2; done; head -c 3000 /dev/zero | tr '\\0' x >&2; echo >&2; exit 3"
    script = task_script(JobRequest(command=cmd, name="n", directory=str(tmp_path)), "cigri:5", 3)
    rc, note = run_task(tmp_path, script, 0)
    key, err, *tail = note.split("\n")
    assert rc == 3 and key == "cigri:5" and err == f"err={tmp_path}/n.77_0.stderr"
    assert len(note.encode()) <= 1024 and tail[-1] == "x" * len(tail[-1]) and len(tail[-1]) > 800
    rc, note = run_task(tmp_path, task_script(JobRequest(command="exit 0", name="n", directory=str(tmp_path)),
                                              "cigri:5", 3), 0)
    assert rc == 0 and note == ""  # success: no comment update (no RPC per task)


def test_working_directory_home_and_missing(tmp_path: Path) -> None:
    home = subprocess.run(["bash", "-c", 'getent passwd "$(id -u)" | cut -d: -f6'], capture_output=True,
                          text=True).stdout.strip()
    for d in ("$HOME", "~", r"\$HOME", "${HOME}"):
        script = task_script(JobRequest(command="true", name="w", directory=d), "cigri:1", 5)
        assert 'cd -- "$HOME"' in script, d
    script = task_script(JobRequest(command="true", directory=f"{tmp_path}/no such"), "cigri:1", 5)
    rc, note = run_task(tmp_path, script, 0)
    assert rc == 1 and "cigri-workdir-error" in note
    rc, _ = run_task(tmp_path, task_script(JobRequest(command="pwd > " + str(tmp_path / "wd"), directory="~"),
                                           "cigri:1", 5), 0)
    assert rc == 0 and (tmp_path / "wd").read_text().strip() == home  # the account's home, not the submitter's


def test_submissions_split_by_array_size_and_key_length() -> None:
    a = adapter()
    cases = [list(range(1, 2501)), random.Random(4).sample(range(10**6, 10**7), 700),
             [5, 7, 9] + list(range(100, 1300)), list(range(3, 1003))]
    for ids in cases:
        params = [f"p{i}" for i in range(len(ids))]
        subs = a.build_submissions(JobRequest(command="x", params=params, job_ids=ids))
        assert [p for _, ps in subs for p in ps] == list(range(len(params)))
        got: list[int] = []
        for body, ps in subs:
            assert len(ps) <= MAX_ARRAY and len(body["job"]["comment"]) <= len(f"cigri:{a.instance}:") + KEY_MAX
            assert body["job"]["array"] == f"0-{len(ps) - 1}"
            got += key_of(body["job"]["comment"], a.instance) or []
            assert key_of(body["job"]["comment"], "another0") is None  # another CiGri's jobs are never adopted
        assert got == ids
    (single, positions), = a.build_submissions(JobRequest(command="prologue", job_ids=[42]))
    assert positions == [] and single["job"]["array"] == "0" and single["job"]["comment"] == f"cigri:{a.instance}:42"
    other = SlurmAdapter(a.cluster, conf=Conf(values={"DATABASE_NAME": "another_cigri"}))
    assert other.instance != a.instance


def test_partitions_qos_resources_and_time_limit() -> None:
    be = JobRequest(command="x", params=["1"], types=["besteffort"], resources="/nodes=2/core=4",
                    walltime="01:00:30", property="ib", project="chem")
    normal = JobRequest(command="x", params=["1"], resources="/core=1")
    a = adapter(normal_partition="normal", besteffort_partition="scavenger", besteffort_qos="low",
                besteffort_mode="cancel")
    job = a.build_submissions(be)[0][0]["job"]
    assert (job["partition"], job["qos"], job["nodes"], job["tasks_per_node"], job["cpus_per_task"],
            job["time_limit"], job["constraints"], job["account"]) == ("scavenger", "low", [2, 2], 1, 4, 61, "ib",
                                                                       "chem")
    assert "PATH" in job["environment"] and job["standard_output"] == "/dev/null"
    job = a.build_submissions(normal)[0][0]["job"]
    assert (job["partition"], "qos" in job, job["tasks"], job["cpus_per_task"]) == ("normal", False, 1, 1)
    job = adapter().build_submissions(be)[0][0]["job"]  # no best-effort setting: the site's default partition
    assert "partition" not in job and "qos" not in job
    assert slurm_resources("/cpu=2/core=4,walltime=2:0:0") == ({"tasks": 1, "cpus_per_task": 8}, 120)
    for bad in ("/gpu=1", "/core=x", "/core=0"):
        with pytest.raises(ClusterAPIBadRequest, match="Resource request"):
            slurm_resources(bad)


def rec(state: str, reason: str = "None", exit_code: int = 0, restarts: int = 0, **kw: Any) -> dict[str, Any]:
    return {"job_state": state, "state_reason": reason, "exit_code": exit_code, "restart_cnt": restarts} | kw


def test_translation_of_slurm_states() -> None:
    cases = [
        (rec("PENDING", "Priority"), Outcome.WAITING, None),
        (rec("PENDING", "JobHeldUser"), Outcome.HELD, None),
        (rec("RUNNING"), Outcome.RUNNING, None),
        (rec("COMPLETING", exit_code=768), Outcome.RUNNING, None),
        (rec("COMPLETED"), Outcome.DONE, ExitStatus(code=0)),
        (rec("FAILED", "NonZeroExitCode", 768), Outcome.DONE, ExitStatus(code=3)),
        (rec("FAILED", "JobLaunchFailure", 9), Outcome.DONE, ExitStatus(signal=9)),  # the script killed itself
        (rec("FAILED", "JobLaunchFailure", 4021), Outcome.FAILED_TO_START, ExitStatus(signal=53)),
        (rec("FAILED", exit_code=256, comment="cigri:1\ncigri-workdir-error: x"), Outcome.FAILED_TO_START,
         ExitStatus(code=1)),
        (rec("TIMEOUT", "TimeLimit", 15), Outcome.WALLTIME, ExitStatus(signal=15)),
        (rec("PREEMPTED", exit_code=36608), Outcome.PREEMPTED, ExitStatus(code=143)),
        (rec("CANCELLED", exit_code=15), Outcome.KILLED, ExitStatus(signal=15)),
        (rec("CANCELLED", "BeginTime", 0, 1), Outcome.PREEMPTED, ExitStatus(code=0)),  # our cancel of a requeue
        (rec("NODE_FAIL"), Outcome.LOST, ExitStatus(code=0)),
        (rec("OUT_OF_MEMORY", exit_code=9), Outcome.ERROR, ExitStatus(signal=9)),
        (rec("NEW_STATE_OF_SLURM_30"), Outcome.HELD, None),
    ]
    for r, outcome, exit_ in cases:
        got = slurm_outcome(r)
        assert (got[0], got[1]) == (outcome, exit_), r
    assert slurm_outcome(rec("CANCELLED", "BeginTime", 0, 1), besteffort=False)[0] is Outcome.LOST


def test_array_records() -> None:
    assert parse_array_spec("0-9%3") == set(range(10))
    assert parse_array_spec("8-14,16-19") == set(range(8, 15)) | set(range(16, 20))
    assert parse_array_spec("0-15:4") == {0, 4, 8, 12}
    master = {"job_id": 12, "array_task_id": None, "array_task_string": "8-14,16-19", "job_state": "PENDING"}
    task = {"job_id": 20, "array_task_id": 7, "job_state": "RUNNING"}
    assert _record_of([master, task], 7) is task and _record_of([master, task], 9) is master
    assert _record_of([master, task], 15) is None  # cancelled alone while pending: Slurm dropped it
    assert not os.environ.get("SLURM_JWT")  # (the tests never need a token from the environment)
