"""Contract tests of the slurm adapter against the REAL slurmrestd of the Slurm testbed
(tools/slurm-testbed/slurm-testbed up): every adapter call, its outcomes (exit code, time
limit, cancellation, preemption in CANCEL and REQUEUE modes, node failure, a working
directory that does not exist), and its failures (bad, expired or missing token, another
user's job, unknown job, unknown API version, server down). Run with
/tmp/cigri-slurm.lock held; every job is cancelled at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from cigri.clusters import get_adapter
from cigri.clusters.base import (
    ClusterAPIConnectionError,
    ClusterAPIForbidden,
    ClusterAPINotFound,
    ClusterAPIPermissionDenied,
    ClusterConfigError,
    ClusterInfo,
    ExitStatus,
    JobRequest,
    Outcome,
    TokenNotFound,
)
from cigri.clusters.slurm import INDEX_BASE, SlurmAdapter, remote_id, slurm_job_id, split_remote_id
from tests.slurm_testbed import (
    cancel,
    cancel_all,
    cluster_row,
    jwt_key_file,
    mint_token,
    rest_start,
    rest_stop,
    slurm,
    submit,
    wait_for,
)

pytestmark = [slurm]

NAME = f"cigri.contract{os.getpid()}"
DEADLINE = 240
# parameter lines with spaces, quotes, shell metacharacters, '#', CiGri's \$ escape, non-ASCII
PARAMS = ["1", "10", "1 0", '"two words" x', "'a;b|c&d>e' f", "'$HOME' '`id`'", r"x\ y", "a#b", "é 日本",
          r"\$HOME/z", "1"]
SCRIPT = '#!/bin/bash\nprintf "[%s]" "$@" > "args.$SLURM_ARRAY_TASK_ID"\n'


def adapter(mapping: dict[str, str] | None = None, **kw: Any) -> SlurmAdapter:
    row = {"id": 77} | cluster_row("sl") | kw
    a = get_adapter(ClusterInfo.from_row(row), mapping=mapping)
    assert isinstance(a, SlurmAdapter)
    return a


def expected_args(line: str) -> str:
    """What bash makes of `script <line>`, CiGri's `\\$` escape being `$` (alice's HOME)."""
    return subprocess.run(["bash", "-c", f'printf "[%s]" {line.replace(chr(92) + "$", "$")}'],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": "/home/alice"}).stdout


def as_alice(path: Path) -> None:
    shutil.chown(path, "alice", "alice")


def ended(a: SlurmAdapter, rids: list[int]) -> dict[int, Any] | None:
    got = a.get_jobs(rids)
    return got if all(got[r].outcome.ended for r in rids) else None


def wait_ended(a: SlurmAdapter, rids: list[int], deadline: float = DEADLINE) -> dict[int, Any]:
    return wait_for(lambda: ended(a, rids), deadline=deadline, interval=0.5, what=f"jobs {rids} ended")


@pytest.fixture(scope="module")
def work() -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm contract tests sign tokens with the testbed's key and write in alice's home: root")
    d = Path(f"/home/alice/cigri-slurm-contract/{os.getpid()}")
    d.mkdir(parents=True, exist_ok=True)
    for p in (d.parent, d):
        as_alice(p)
    (d / "args.sh").write_text(SCRIPT)
    (d / "args.sh").chmod(0o755)
    as_alice(d / "args.sh")
    a = adapter()
    w: dict[str, Any] = {"a": a, "dir": d}
    # independent jobs, submitted at once; each test then waits for its own
    w["walltime"] = a.submit(JobRequest(command="sleep 300", walltime="00:01:00", name=NAME, job_ids=[1]),
                             "alice")[0]
    try:
        yield w
    finally:
        cancel_all(NAME)
        shutil.rmtree(d, ignore_errors=True)


def test_array_tasks_run_exactly_their_parameter_line(work: dict[str, Any]) -> None:
    a, d = work["a"], work["dir"]
    ids = a.submit(JobRequest(command=f"export CIGRI_CAMPAIGN_ID=7;{d}/args.sh", params=PARAMS, name=NAME,
                              directory=str(d), walltime="00:05:00", job_ids=list(range(1001, 1001 + len(PARAMS)))),
                   "alice")
    arrays = {split_remote_id(r)[0] for r in ids}
    assert len(arrays) == 1 and [split_remote_id(r)[1] for r in ids] == list(range(len(PARAMS)))
    a.http.calls = 0
    jobs = wait_ended(a, ids)
    polls = a.http.calls
    for rid, line in zip(ids, PARAMS, strict=True):
        j = jobs[rid]
        assert (j.outcome, j.exit, j.raw_state) == (Outcome.DONE, ExitStatus(code=0), "COMPLETED"), (line, j)
        assert j.owner == "alice" and j.start_time and j.stop_time and j.start_time <= j.stop_time
        got = (d / f"args.{split_remote_id(rid)[1]}").read_text()
        assert got == expected_args(line), (line, got)
        assert (d / f"{NAME}.{slurm_job_id(rid)}.stdout").exists()
    # bulk polling: one GET per array, whatever its size (a few polls until they ended)
    a.http.calls = 0
    a.get_jobs(ids)
    assert a.http.calls == 1, polls
    # the tag left on the array finds the jobs again (a runner killed between POST and recording)
    assert a.find_submitted([1003, 1005, 99999], "alice") == {1003: ids[2], 1005: ids[4]}
    assert a.find_submitted([1003], "bob") == {}  # only the owner's submissions


def test_exit_code_and_stderr_tail_of_a_failed_task(work: dict[str, Any]) -> None:
    a, d = work["a"], work["dir"]
    cmd = "for i in 1 2 3 4 5 6 7; do echo err$i >&2; done; echo out; exit 3"
    rid = a.submit(JobRequest(command=cmd, name=NAME, directory=str(d), job_ids=[2001]), "alice")[0]
    j = wait_ended(a, [rid])[rid]
    assert (j.outcome, j.exit, j.raw_state) == (Outcome.DONE, ExitStatus(code=3), "FAILED")
    assert j.exit.wait_status == 768 and j.failed
    assert j.stderr_file == f"{d}/{NAME}.{slurm_job_id(rid)}.stderr"
    assert a.stderr_tail(j, "alice", 5) == "err3\nerr4\nerr5\nerr6\nerr7"
    assert (d / f"{NAME}.{slurm_job_id(rid)}.stdout").read_text() == "out\n"
    with pytest.raises(ClusterAPINotFound, match="serves no files"):
        a.get_file(j.stderr_file, "alice")


def test_huge_stderr_tail_fits_the_comment_and_stays_readable(work: dict[str, Any]) -> None:
    a, d = work["a"], work["dir"]
    cmd = r"head -c 5000 /dev/urandom >&2; printf 'last\xff line\n' >&2; exit 1"
    rid = a.submit(JobRequest(command=cmd, name=NAME, directory=str(d), job_ids=[2101]), "alice")[0]
    j = wait_ended(a, [rid])[rid]
    tail = a.stderr_tail(j, "alice", 5)
    assert j.exit == ExitStatus(code=1) and tail.endswith("last line") and len(tail.encode()) < 1024


def test_missing_working_directory_fails_to_start(work: dict[str, Any]) -> None:
    a = work["a"]
    rid = a.submit(JobRequest(command="true", name=NAME, directory="$HOME/no/such/dir", job_ids=[2201]),
                   "alice")[0]
    j = wait_ended(a, [rid])[rid]
    assert j.outcome is Outcome.FAILED_TO_START and j.reason == "working directory"


def test_delete_job_cancels_pending_and_running_tasks(work: dict[str, Any]) -> None:
    a = work["a"]
    ids = a.submit(JobRequest(command="sleep 300", params=[str(i) for i in range(12)], name=NAME,
                              resources="/core=1", job_ids=list(range(3001, 3013))), "alice")
    wait_for(lambda: a.get_job(ids[0], "alice").outcome is Outcome.RUNNING, deadline=DEADLINE, what="running")
    assert a.get_job(ids[-1], "alice").outcome is Outcome.WAITING  # 12 tasks > the 8 CPUs (walltime job: 1)
    a.delete_job(ids[0], "alice")
    a.delete_job(ids[-1], "alice")
    got = wait_ended(a, [ids[0], ids[-1]])
    assert got[ids[0]].outcome is Outcome.KILLED
    # Slurm drops a pending array task cancelled alone: the task is reported lost (CiGri resubmits it)
    assert got[ids[-1]].outcome is Outcome.LOST
    with pytest.raises(ClusterAPINotFound):
        a.get_job(ids[-1], "alice")
    a.delete_job(ids[0], "alice")  # already ended: not an error
    a.delete_job(ids[-1], "alice")  # unknown to Slurm: not an error
    for rid in ids[1:-1]:
        a.delete_job(rid, "alice")
    wait_ended(a, ids)


def test_other_users_job_and_unknown_job(work: dict[str, Any]) -> None:
    a = work["a"]
    bobs = submit("bob", "#!/bin/bash\nsleep 300\n", name=NAME, standard_output="/dev/null", array="0")
    try:
        with pytest.raises(ClusterAPIForbidden, match="permission denied"):
            a.delete_job(remote_id(bobs, 0), "alice")
    finally:
        cancel(bobs, "bob")
    unknown = remote_id(9_999_999, 3)
    with pytest.raises(ClusterAPINotFound):
        a.get_job(unknown, "alice")
    assert a.get_jobs([unknown])[unknown].outcome is Outcome.LOST
    a.delete_job(unknown, "alice")


def test_tokens_registered_by_users(work: dict[str, Any]) -> None:
    """Without the key, CiGri uses the token each user registered with gridtoken (its `sun`
    names the Slurm login); a missing, expired, forged or mismatched one is a clear error."""
    no_key = {"jwt_key_file": None, "api_username": None}
    good = adapter({"alice": "Bearer " + mint_token("alice")}, **no_key)
    rid = good.submit(JobRequest(command="true", name=NAME, job_ids=[4001]), "alice")[0]
    assert wait_ended(good, [rid])[rid].outcome is Outcome.DONE
    with pytest.raises(TokenNotFound, match="gridtoken"):
        good.submit(JobRequest(command="true", name=NAME), "bob")
    now = int(time.time())
    expired = jwt.encode({"iat": now - 600, "exp": now - 60, "sun": "alice"}, jwt_key_file().read_bytes(),
                         algorithm="HS256")
    with pytest.raises(TokenNotFound, match="expired"):
        adapter({"alice": expired}, **no_key).submit(JobRequest(command="true", name=NAME), "alice")
    forged = jwt.encode({"iat": now, "exp": now + 600, "sun": "alice"}, b"not the key of this cluster.....",
                        algorithm="HS256")
    bad = adapter({"alice": forged}, **no_key)
    with pytest.raises(ClusterAPIPermissionDenied, match="refused the token"):
        bad.submit(JobRequest(command="true", name=NAME), "alice")
    with pytest.raises(ClusterAPIPermissionDenied, match="refused the token"):
        bad.get_job(rid, "alice")
    assert not bad.check_api()
    for secret in (forged, expired):
        assert secret not in str(good.__dict__.get("_tokens"))
    pasted = adapter({"alice": "Bearer SLURM_JWT=" + mint_token("alice")}, **no_key)  # `scontrol token` output as is
    assert pasted.get_job(rid, "alice").outcome is Outcome.DONE


def test_a_registered_token_never_changes_whom_signed_tokens_act_as(work: dict[str, Any]) -> None:
    """With the signing key, CiGri acts as the cluster login an admin mapped (or the grid login):
    a token alice registers with gridtoken (naming bob) is ignored, it cannot make CiGri act as bob."""
    a = adapter({"alice": "Bearer " + mint_token("bob"), "carol": "alice"})
    rid = a.submit(JobRequest(command="true", name=NAME, job_ids=[4101]), "alice")[0]
    assert wait_ended(a, [rid])[rid].owner == "alice"
    rid = a.submit(JobRequest(command="true", name=NAME, job_ids=[4102]), "carol")[0]  # admin's mapping
    assert wait_ended(a, [rid])[rid].owner == "alice"


def test_signed_tokens_and_a_key_that_cannot_be_read(work: dict[str, Any], tmp_path: Path) -> None:
    a = work["a"]
    assert a.check_api() and a.ping()["meta"]["Slurm"]["release"].startswith("22.05")
    claims = jwt.decode(a._token("alice", "X"), jwt_key_file().read_bytes(), algorithms=["HS256"])
    assert claims["sun"] == "alice" and claims["exp"] - claims["iat"] <= 900
    broken = adapter(jwt_key_file=str(tmp_path / "missing.key"))
    with pytest.raises(ClusterConfigError, match="cannot read its JWT key file"):
        broken.submit(JobRequest(command="true"), "alice")


def test_unknown_api_version_is_refused_clearly(work: dict[str, Any], slurm_url: str) -> None:
    a = adapter(api_url=slurm_url + "slurm/v0.0.99/")
    with pytest.raises(ClusterConfigError, match=r"does not offer OpenAPI v0.0.99 \(it offers: v0.0.36, v0.0.37, "
                                                 r"v0.0.38\).*speaks v0.0.38"):
        a.get_stress_factor()
    assert adapter(api_url=slurm_url + "slurm/v0.0.38/").check_api()


@pytest.fixture
def slurm_url() -> str:
    return str(cluster_row()["api_url"])


def test_resources_usage_and_stress(work: dict[str, Any]) -> None:
    a = work["a"]
    res = a.get_resources()
    assert len(res) == 8 and {r["host"] for r in res} == {"slnode1", "slnode2"}
    assert all(r["state"] == "Alive" for r in res)
    running = a.get_running_jobs()
    ids = {r["id"] for r in res}
    assert all(x["id"] in ids for j in running for x in j.resources)
    assert work["walltime"] in {j.id for j in running} or a.get_job(work["walltime"]).outcome.ended
    assert 0 <= a.get_stress_factor() < 0.5


def _fill(a: SlurmAdapter, n: int, base: int) -> list[int]:
    ids = a.submit(JobRequest(command="sleep 600", params=[str(i) for i in range(n)], name=NAME,
                              types=["besteffort"], job_ids=list(range(base, base + n))), "alice")
    wait_for(lambda: all(r.outcome is Outcome.RUNNING for r in a.get_jobs(ids).values()), deadline=DEADLINE,
             what="best-effort tasks running")
    return ids


def _free_cpus(a: SlurmAdapter) -> int:
    return 8 - sum(1 for j in a.get_running_jobs() for _ in j.resources)


@pytest.mark.parametrize("mode", ["cancel", "requeue"])
def test_preempted_besteffort_tasks_end_once_and_never_run_again(work: dict[str, Any], mode: str) -> None:
    """A normal job takes the CPUs of best-effort tasks: in CANCEL mode Slurm ends them
    PREEMPTED; in REQUEUE mode it queues them again, and the adapter cancels those copies
    and reports them preempted once they ended: no copy ever runs again."""
    part = {"cancel": "bestcancel", "requeue": "besteffort"}[mode]
    a = adapter(besteffort_partition=part, besteffort_mode=mode)
    wait_for(lambda: _free_cpus(a) >= 4, deadline=DEADLINE, what="4 free CPUs")
    n = _free_cpus(a)
    ids = _fill(a, n, 5000 if mode == "cancel" else 6000)
    assert {j.queue for j in a.get_jobs(ids).values()} == {part}
    normal = submit("bob", "#!/bin/bash\nsleep 5\n", name=NAME, partition="normal", tasks=n,
                    standard_output="/dev/null")
    try:
        seen: dict[int, list[Outcome]] = {r: [] for r in ids}

        def all_preempted() -> bool:
            for rid, j in a.get_jobs(ids).items():
                if not seen[rid] or seen[rid][-1] is not j.outcome:
                    seen[rid].append(j.outcome)
            return all(s[-1] is Outcome.PREEMPTED for s in seen.values())
        wait_for(all_preempted, deadline=DEADLINE, interval=0.3, what=f"tasks preempted ({mode})")
        final = a.get_jobs(ids)
        for rid in ids:
            assert seen[rid][0] is Outcome.RUNNING and seen[rid][-1] is Outcome.PREEMPTED, seen[rid]
            assert final[rid].raw_state == ("PREEMPTED" if mode == "cancel" else "CANCELLED")
            assert final[rid].requeues == (0 if mode == "cancel" else 1)
    finally:
        cancel(normal, "bob")
    # the requeued copies were cancelled before Slurm could start them again
    assert all(j.outcome is Outcome.PREEMPTED and j.requeues <= 1 for j in a.get_jobs(ids).values())


def test_server_down_is_a_connection_error(work: dict[str, Any]) -> None:
    a = work["a"]
    rest_stop()
    try:
        with pytest.raises(ClusterAPIConnectionError) as e:
            a.get_jobs([remote_id(1, 0)])
        assert e.value.code == "CONNECTION_REFUSED"
        assert not a.check_api()
    finally:
        rest_start()
    assert a.check_api()


def test_remote_ids_are_array_and_index() -> None:
    rid = remote_id(1234, 5)
    assert rid == 1234 * INDEX_BASE + 5 and split_remote_id(rid) == (1234, 5) and slurm_job_id(rid) == "1234_5"


def test_time_limit_ends_as_walltime(work: dict[str, Any]) -> None:
    """Late in the module: its job was submitted first and needs 60-90 s (Slurm checks limits every 30 s)."""
    a, rid = work["a"], work["walltime"]
    j = wait_ended(a, [rid], deadline=300)[rid]
    assert (j.outcome, j.raw_state) == (Outcome.WALLTIME, "TIMEOUT")
    assert j.raw["time_limit"] == 1


def test_node_failure_of_a_normal_job_is_a_loss(work: dict[str, Any]) -> None:
    """A node going down under a normal job: Slurm requeues it (JobRequeue=1); the adapter
    cancels that copy and reports the task lost (CiGri resubmits it). Last: the node's other
    jobs (the time-limit one) would be requeued too."""
    a = work["a"]
    rid = a.submit(JobRequest(command="sleep 600", name=NAME, job_ids=[7001]), "alice")[0]
    j = wait_for(lambda: (lambda r: r if r.outcome is Outcome.RUNNING else None)(a.get_job(rid, "alice")),
                 deadline=DEADLINE, what="running")
    node = j.raw["nodes"]
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=cigri-contract-test"],
                   check=True, capture_output=True, env=dict(os.environ, SLURM_CONF="/etc/slurm/slurm.conf"))
    try:
        got = wait_ended(a, [rid])[rid]
        assert got.outcome is Outcome.LOST and got.requeues >= 1
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True,
                       env=dict(os.environ, SLURM_CONF="/etc/slurm/slurm.conf"))
        wait_for(lambda: all(r["state"] == "Alive" for r in a.get_resources()), deadline=120, what="node back")
