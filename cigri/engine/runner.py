"""The runner of one cluster (spec §7): follows its jobs on the cluster, records what it
saw (job states, job events, cluster events), and submits queued tasks as fast as the
cluster takes them. It takes no decision on events: colombo does.

Crash safety: a job is `launching` (committed) before its POST. At the start of every cycle
`launching` jobs are reconciled: the runner looks on the cluster for jobs OAR accepted (by
their exact command, among ids above the highest id it had recorded) and adopts them; only
jobs OAR never got become STUCK_LAUNCHING_JOB events (resubmitted by colombo). So a `kill -9`
at any moment loses no task and runs none twice."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from cigri import containers
from cigri.clock import now
from cigri.clusters import get_adapter
from cigri.clusters.base import (
    ClusterAdapter,
    ClusterAPIConnectionError,
    ClusterAPIError,
    ClusterAPINotFound,
    ClusterAPIPermissionDenied,
    ClusterAPITimeout,
    ClusterAPITooLarge,
    ClusterInfo,
    ExitStatus,
    JobRequest,
    Outcome,
    RemoteJob,
    TokenNotFound,
)
from cigri.config import Conf, get_conf
from cigri.db import notify as dbnotify
from cigri.db import queue as dbqueue
from cigri.db import runner as db
from cigri.db import taps as dbtaps
from cigri.db.clusters import get_cluster, user_mapping
from cigri.db.events import campaign_blacklists, cluster_blacklisted, create_event
from cigri.db.jobs import change_state, change_states, decrease_affinity, new_batch_id
from cigri.engine.analysis import Analysis, analyze_remote_job
from cigri.errors import NotFound
from cigri.event_codes import KILL_CAUSE_WORDS
from cigri.run_options import RunOptions, in_nightly_window
from cigri.states import JobState

log = logging.getLogger("cigri.runner")

RECONCILE_WINDOWS = 20


class ClusterGone(Exception):
    """The runner's cluster is disabled or removed: the runner must exit."""


@dataclass
class CycleResult:
    submitted: int = 0
    in_flight: int = 0
    queued: bool = False
    events: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Update:
    job: db.RunnerJob
    new_state: str
    values: dict[str, Any] = field(default_factory=dict)
    analysis: Analysis | None = None
    event: tuple[str, str] | None = None  # (code, message) of an open job event


def _epoch(v: int | None) -> datetime | None:
    """A cluster's epoch time; None when absent or absurd (a bad answer must not stop a poll)."""
    try:
        return datetime.fromtimestamp(v, UTC) if v else None
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def _unescape(s: str) -> str:
    """The JDL escapes `$` for the OAR API shell; inside a generated script it must not be."""
    return s.replace("\\$", "$")


def script_command(script: str) -> str:
    """A shell command that runs `script` exactly: the script travels base64-encoded (no `$`,
    quote or back-quote for the OAR API's shell to expand) and is piped into bash. It is one
    `{ … } </dev/null` group, so bash reads it whole before running it: a task reading its
    stdin cannot eat the rest of the script, and no file is left behind."""
    body = "{\n" + script.rstrip("\n") + "\n} < /dev/null\n"
    return f"echo {base64.b64encode(body.encode()).decode()}|base64 -d|bash"


def batch_script(exec_file: str, jobs: list[db.RunnerJob], container: dict[str, Any] | None = None,
                 directory: str | None = None) -> str:
    """Temporal grouping: the tasks one after the other, each in the container if there is one."""
    lines = ["set +e"]
    run = _unescape(exec_file)
    if container:
        lines.append(containers.task_function(container, exec_file, directory).rstrip("\n"))
        run = "cigri_task"
    for j in jobs:
        st = f"cigri_batch_state_{j.id}"
        lines += [f'echo "BEGIN_DATE=$(date +%s)" > {st}',
                  f"{run} {_unescape(j.param)} > cigri_batch_stdout_{j.id} "
                  f"2> cigri_batch_stderr_{j.id} < /dev/null",
                  f'echo "RET=$?" >> {st}',
                  f'echo "END_DATE=$(date +%s)" >> {st}']
    return "\n".join(lines) + "\n"


class Runner:
    def __init__(self, engine: Engine, cluster_name: str, conf: Conf | None = None,
                 adapter_factory: Callable[[ClusterInfo, Conf, dict[str, str]], ClusterAdapter] | None = None):
        self.engine = engine
        self.name = cluster_name
        self.conf = conf or get_conf()
        self._factory = adapter_factory or (lambda info, conf, mapping: get_adapter(info, conf, mapping))
        self.cluster: ClusterInfo | None = None
        self.adapter: ClusterAdapter | None = None
        self.closed_last_cycle: set[int] = set()
        #: campaign -> jobs accepted by the cluster but not started yet (bounds the pipeline)
        self.pending: dict[int, int] = {}

    # ------------------------------------------------------------------ setup
    def load(self) -> ClusterInfo:
        """(Re)load the cluster row by name; ClusterGone if it is disabled or removed."""
        with self.engine.connect() as conn:
            try:
                info = get_cluster(conn, name=self.name)
            except NotFound as e:
                raise ClusterGone(f"Cluster {self.name} is disabled or does not exist") from e
            mapping = user_mapping(conn, info.id)
        if self.adapter is None or self.cluster is None or self.cluster != info:
            if self.adapter is not None:
                self.adapter.close()
            self.adapter = self._factory(info, self.conf, mapping)
        else:
            self.adapter.set_mapping(mapping)
        self.cluster = info
        return info

    @property
    def cid(self) -> int:
        assert self.cluster is not None
        return self.cluster.id

    def _wake(self, conn: Connection, channel: str) -> None:
        """Wake a daemon (COLOMBO, JUDAS, UPDATOR, METASCHEDULER) once this transaction commits."""
        dbnotify.notify(conn, getattr(dbnotify, channel))

    def _cluster_event(self, conn: Connection, e: ClusterAPIError, what: str) -> None:
        """Record an adapter error as the cluster event its code names (spec §8.5)."""
        if e.code:
            create_event(conn, "cluster", e.code, state="open" if e.event_open else "closed",
                         cluster_id=self.cid, message=f"{what}: {e}")
            if e.event_open:
                self._wake(conn, "COLOMBO")

    # ------------------------------------------------------------------ cycle
    def run_cycle(self) -> CycleResult:
        self.load()
        res = CycleResult()
        with self.engine.begin() as conn:
            # taps closed during the previous cycle are decreased (no-op inside the grace period)
            for tap in dbtaps.get_taps(conn, self.cid, sorted(self.closed_last_cycle)).values():
                dbtaps.decrease_rate(conn, tap, self.conf)
            globally = cluster_blacklisted(conn, self.cid)
            if globally:
                db.reset_and_close_taps(conn, self.cid, self.conf.get("RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS"), now())
        self.closed_last_cycle = set()
        if globally:
            # nothing new goes there, but the jobs already there are still followed
            log.info("Cluster %s is blacklisted: following its jobs only", self.name)
            self.poll(res, follow_only=True)
            return res
        if not self.reconcile_launching(res):
            return res
        closed = self.poll(res)
        self.closed_last_cycle = closed
        self.submit(res, closed)
        return res

    # ------------------------------------------------------------------ reconcile
    def reconcile_launching(self, res: CycleResult) -> bool:
        """Adopt `launching` jobs OAR accepted; the others become STUCK_LAUNCHING_JOB.
        False when the cluster could not be asked (they stay `launching` for next cycle)."""
        with self.engine.connect() as conn:
            stuck = db.jobs_in_states(conn, self.cid, ["launching"])
            if not stuck:
                return True
            start = db.max_remote_id(conn, self.cid) + 1
            props = db.properties(conn, {j.campaign_id for j in stuck}, self.cid)
        assert self.adapter is not None
        try:
            tagged = self._find_submitted(stuck)
        except ClusterAPIError as e:
            log.warning("Cannot reconcile launching jobs on %s: %s", self.name, e)
            with self.engine.begin() as conn:
                self._cluster_event(conn, e, "Reconciling launching jobs")
            return False
        if tagged is not None:
            self._adopt(stuck, tagged, res)
            return True
        expected: dict[int, str] = {}
        for j in stuck:
            expected[j.id] = " ".join(self._expected_command(j, props.get(j.campaign_id, {}), stuck).split())
        found: dict[int, RemoteJob] = {}
        try:
            step = max(self.cluster.api_chunk_size if self.cluster else 100, 100)
            lo = start
            for _ in range(RECONCILE_WINDOWS):
                got = self.adapter.get_jobs(list(range(lo, lo + step)))
                if not got:
                    break
                found.update(got)
                lo += step
        except ClusterAPIError as e:
            log.warning("Cannot reconcile launching jobs on %s: %s", self.name, e)
            with self.engine.begin() as conn:
                self._cluster_event(conn, e, "Reconciling launching jobs")
            return False
        with self.engine.connect() as conn:
            known = db.known_remote_ids(conn, [self.cid], list(found))
        candidates = {rid: r for rid, r in sorted(found.items()) if rid not in known}
        self._adopt(stuck, self._match_launching(stuck, expected, candidates), res)
        return True

    def _find_submitted(self, stuck: list[db.RunnerJob]) -> dict[int, int] | None:
        """The adapter's own answer (jobs it tagged with their CiGri ids), per owner; None when
        it cannot tell (the runner then matches commands)."""
        assert self.adapter is not None
        found: dict[int, int] = {}
        for user in sorted({j.grid_user for j in stuck}):
            got = self.adapter.find_submitted([j.id for j in stuck if j.grid_user == user], user)
            if got is None:
                return None
            found.update(got)
        return found

    def _adopt(self, stuck: list[db.RunnerJob], matches: dict[int, int], res: CycleResult) -> None:
        """Launching jobs found on the cluster become `submitted`; the others STUCK_LAUNCHING_JOB
        events (colombo resubmits them). A remote id already recorded for another job is never
        adopted twice."""
        with self.engine.begin() as conn:
            known = db.known_remote_ids(conn, [self.cid], list(matches.values()))
            matches = {jid: rid for jid, rid in matches.items() if rid not in known}
            for j in stuck:
                match = matches.get(j.id)
                if match is not None:
                    change_state(conn, j.id, JobState.LAUNCHING, JobState.SUBMITTED, remote_id=match,
                                 submission_time=now())
                    log.info("Adopted job %s: the cluster had accepted it as %s before the runner stopped", j.id, match)
                elif change_state(conn, j.id, JobState.LAUNCHING, JobState.EVENT):
                    create_event(conn, "job", "STUCK_LAUNCHING_JOB", job_id=j.id, cluster_id=self.cid,
                                 campaign_id=j.campaign_id,
                                 message=f"Runner {self.name} found this job stuck in the launching state "
                                         "and not on the cluster")
                    res.events += 1
            if res.events:
                self._wake(conn, "COLOMBO")

    @staticmethod
    def _match_launching(stuck: list[db.RunnerJob], expected: dict[int, str],
                         candidates: dict[int, RemoteJob]) -> dict[int, int]:
        """CiGri job id -> OAR id. Exact commands first; then, for array tasks whose exec_file
        the API's shell expanded (`$HOME/x`), the prefix OAR shows for the campaign (inferred
        from the candidates) followed by exactly the task's parameter line."""
        norm = {rid: " ".join(_unescape(r.command or "").split()) for rid, r in candidates.items()}
        free = dict(norm)
        out: dict[int, int] = {}
        for j in stuck:
            rid = next((r for r, c in free.items() if c == expected[j.id]), None)
            if rid is not None:
                out[j.id] = rid
                if j.tag != "batch":
                    free.pop(rid)
        rest = [j for j in stuck if j.id not in out and j.tag is None and j.param]
        for cid in {j.campaign_id for j in rest}:
            mine = [j for j in rest if j.campaign_id == cid]
            marker = f"CIGRI_CAMPAIGN_ID={cid};"
            prefixes: dict[str, int] = {}
            for j in mine:
                tail = " " + " ".join(_unescape(j.param).split())
                for c in free.values():
                    if marker in c and c.endswith(tail):
                        prefixes[c[: -len(tail)]] = prefixes.get(c[: -len(tail)], 0) + 1
            if not prefixes:
                continue
            prefix = max(prefixes, key=lambda k: prefixes[k])
            for j in mine:
                want = prefix + " " + " ".join(_unescape(j.param).split())
                rid = next((r for r, c in free.items() if c == want), None)
                if rid is not None:
                    out[j.id] = rid
                    free.pop(rid)
        return out

    def _expected_command(self, j: db.RunnerJob, props: dict[str, str], group: list[db.RunnerJob]) -> str:
        base = f"export CIGRI_CAMPAIGN_ID={j.campaign_id};"
        if j.tag in ("prologue", "epilogue"):
            return base + script_command(_unescape(props.get(j.tag or "", "")))
        if j.tag == "batch":
            sub = sorted([g for g in group if g.batch_id == j.batch_id and g.tag == "batch"], key=lambda g: g.id)
            return base + script_command(self._batch_script(sub, props))
        return _unescape(f"{base}{self._task_command(j, props)} {j.param}".strip())

    # ------------------------------------------------------------------ polling
    def poll(self, res: CycleResult, follow_only: bool = False) -> set[int]:
        """Update the jobs of this cluster from the cluster; returns campaigns whose tap closed.
        Every job already on the cluster is followed, whatever blacklists its campaign or the
        cluster (a blacklist only stops new submissions). `follow_only` (the cluster is
        blacklisted): taps are left closed and a failure to ask the cluster is only logged,
        the open event that blacklisted it already says so."""
        closed: set[int] = set()
        with self.engine.connect() as conn:
            jobs = db.jobs_in_states(conn, self.cid)
            bl = campaign_blacklists(conn, self.cid)
            live = db.live_campaigns(conn, self.cid)
        res.in_flight = len(jobs)
        assert self.adapter is not None
        adapter = self.adapter
        closed |= {c for (_, c) in bl}  # their taps stay closed: nothing is submitted for them
        followed = jobs
        updates: list[_Update] = []
        ids = sorted({j.remote_id for j in followed if j.remote_id})
        remote: dict[int, RemoteJob] = {}
        if ids:
            try:
                remote = adapter.get_jobs(ids)
            except ClusterAPIError as e:
                log.warning("Could not get the jobs of %s: %s", self.name, e)
                if not follow_only:
                    with self.engine.begin() as conn:
                        self._cluster_event(conn, e, "Polling jobs")
                return closed | {j.campaign_id for j in jobs}
        tail_n = int(self.conf.get("STDERR_TAIL"))
        waiting_delay = float(self.conf.get("RUNNER_WAITING_GRACE"))
        t_now = now()
        for j in followed:
            if not j.remote_id:
                updates.append(_Update(j, "event", event=("RUNNER_GET_REMOTE_ID_ERROR",
                               f"Job {j.id} is lost, it has no remote_id!")))
                continue
            r = remote.get(j.remote_id)
            if r is None:
                try:
                    r = adapter.get_job(j.remote_id, j.grid_user)
                except ClusterAPIError as e:
                    closed.add(j.campaign_id)
                    code = "RUNNER_GET_JOB_SERVER_ERROR" if e.status == 500 else "RUNNER_GET_JOB_UNKNOWN_ERROR"
                    if isinstance(e, (ClusterAPIConnectionError, ClusterAPITimeout)):
                        if not follow_only:
                            with self.engine.begin() as conn:
                                self._cluster_event(conn, e, f"Getting job {j.remote_id}")
                        break
                    updates.append(_Update(j, "event", event=(code, f"Could not get job {j.remote_id}: {e}")))
                    continue
            if j.tag == "batch":
                u = self._batch_update(j, r, tail_n)
                if u is None:
                    closed.add(j.campaign_id)
                    continue
                if u.new_state != j.state or u.values:
                    updates.append(u)
                if r.outcome is Outcome.WAITING:
                    closed.add(j.campaign_id)
                continue
            if r.outcome.ended:
                values: dict[str, Any] = {"stop_time": _epoch(r.stop_time) or t_now}
                if r.start_time and j.start_time is None:
                    values["start_time"] = _epoch(r.start_time)  # CiGri3 left it empty for fast jobs
                if r.exit is not None:
                    values["return_code"] = r.exit.wait_status
                if r.failed:
                    an = analyze_remote_job(j.tag, j.id, r, self._tailer(j.grid_user, tail_n), tail_n)
                    updates.append(_Update(j, an.job_state, values if an.job_state == "event" else {}, an))
                    if not an.resubmits:
                        closed.add(j.campaign_id)
                else:
                    updates.append(_Update(j, "terminated", values))
            elif r.outcome is Outcome.RUNNING:
                if j.state != "running" or j.start_time is None:
                    updates.append(_Update(j, "running", {"start_time": _epoch(r.start_time) or t_now}))
            elif r.outcome is Outcome.WAITING:
                if j.state != "remote_waiting":
                    updates.append(_Update(j, "remote_waiting"))
                # freshly submitted jobs wait until the cluster's scheduler runs: only jobs
                # waiting longer than RUNNER_WAITING_GRACE say "the cluster is full". Measured
                # on CiGri's clock: a cluster's submission_time can be minutes stale (OAR3).
                sub = j.submission_time
                if sub is None or (t_now - sub).total_seconds() > waiting_delay:
                    closed.add(j.campaign_id)
            else:
                closed.add(j.campaign_id)
        self._apply(updates, res)
        ended = sum(1 for u in updates if u.new_state in ("terminated", "event"))
        if ended and ended == len(jobs):
            # Nothing left in flight here: a campaign may be over, let the updator see it now.
            with self.engine.begin() as conn:
                self._wake(conn, "UPDATOR")
        started = {u.job.id for u in updates if u.new_state not in ("submitted", "remote_waiting")}
        self.pending = {}
        for j in followed:
            if j.state in ("submitted", "remote_waiting") and j.id not in started:
                self.pending[j.campaign_id] = self.pending.get(j.campaign_id, 0) + 1
        if follow_only:
            return closed
        # taps of campaigns not closed this cycle are (re)opened
        with self.engine.begin() as conn:
            campaigns = {j.campaign_id for j in jobs} | set(live)
            taps = {c: dbtaps.get_or_create_tap(conn, self.cid, c, self.conf) for c in campaigns}
            for c, tap in taps.items():
                if c in closed:
                    dbtaps.close_tap(conn, tap)
                else:
                    dbtaps.open_tap(conn, tap)
        return closed

    def _tailer(self, user: str, n: int) -> Callable[[RemoteJob], str]:
        return lambda r: self._tail(r, user, n)

    def _tail(self, r: RemoteJob, user: str, n: int) -> str:
        if self.adapter is None:
            return ""
        try:
            return self.adapter.stderr_tail(r, user, n)
        except ClusterAPIError as e:
            log.warning("Could not read the stderr of job %s: %s", r.id, e)
            return ""

    def _subjob(self, j: db.RunnerJob, r: RemoteJob) -> dict[str, Any] | None:
        """The batch sub-job state file (spec §7.7); None when it cannot be read."""
        assert self.adapter is not None
        directory = (r.launching_directory or "").rstrip("/")
        try:
            text = self.adapter.get_file(f"{directory}/cigri_batch_state_{j.id}", j.grid_user)
        except ClusterAPINotFound:
            return {"state": "notstarted"}
        except ClusterAPIError as e:
            log.warning("Could not read the state of batch sub-job %s: %s", j.id, e)
            return None
        out: dict[str, Any] = {"state": "notstarted"}
        for line in text.splitlines():
            k, _, v = line.strip().partition("=")
            if k == "BEGIN_DATE" and v.isdigit():
                out["start"], out["state"] = int(v), "running"
            elif k == "RET" and v.lstrip("-").isdigit():
                out["ret"] = int(v)
            elif k == "END_DATE" and v.isdigit():
                out["stop"], out["state"] = int(v), "finished"
        return out

    def _batch_update(self, j: db.RunnerJob, r: RemoteJob, tail_n: int) -> _Update | None:
        """A sub-job of a grouped cluster job: its own state file says where it stands."""
        if r.outcome in (Outcome.WAITING, Outcome.HELD):
            return _Update(j, "remote_waiting" if r.outcome is Outcome.WAITING else j.state)
        sub = self._subjob(j, r)
        if sub is None:
            return None
        if sub["state"] == "finished" and "ret" in sub:
            ex = ExitStatus.exited(sub["ret"])  # 66/67 work for sub-jobs too (CiGri3 forgot them)
            values = {"start_time": _epoch(sub.get("start")), "stop_time": _epoch(sub.get("stop")),
                      "return_code": ex.wait_status}
            if not ex.ok:
                pseudo = RemoteJob(id=r.id, outcome=Outcome.DONE, raw_state=r.raw_state, exit=ex,
                                   launching_directory=r.launching_directory,
                                   stderr_file=f"cigri_batch_stderr_{j.id}")
                an = analyze_remote_job(j.tag, j.id, pseudo, self._tailer(j.grid_user, tail_n), tail_n)
                return _Update(j, "event", values, an)
            return _Update(j, "terminated", values)
        if r.outcome.ended:
            # the cluster job is over but this sub-job never finished: resubmit it
            an = Analysis("RESUBMIT", f"Resubmit cause: batch job {r.id} ended ({r.reason or r.raw_state}) "
                                      f"before this sub-job {'finished' if sub['state'] == 'running' else 'started'}",
                          kill_cause=r.outcome if r.outcome in KILL_CAUSE_WORDS else None)
            return _Update(j, "event", {"stop_time": _epoch(r.stop_time) or now()}, an)
        if sub["state"] == "running":
            return _Update(j, "running", {"start_time": _epoch(sub.get("start"))} if j.start_time is None else {})
        return _Update(j, "batch_waiting")

    def _apply(self, updates: list[_Update], res: CycleResult) -> None:
        """All the transitions seen in this cycle, in one transaction, each guarded by the
        state read (a job changed meanwhile by nikita or an admin is left alone). If the
        database refuses it, each job is written in its own transaction: one job whose
        update cannot be stored never blocks the others (it is logged, and tried again)."""
        if not updates:
            return
        try:
            with self.engine.begin() as conn:
                n_events = self._write_updates(conn, updates)
        except SQLAlchemyError as e:
            log.error("Runner %s could not record its poll at once (%s): recording job by job", self.name,
                      " ".join(str(e).split())[:300])
            n_events = 0
            for u in updates:
                try:
                    with self.engine.begin() as conn:
                        n_events += self._write_updates(conn, [u])
                except SQLAlchemyError as e1:
                    log.error("Runner %s could not record job %s (%s -> %s): %s", self.name, u.job.id,
                              u.job.state, u.new_state, " ".join(str(e1).split())[:300])
        res.events += n_events

    def _write_updates(self, conn: Connection, updates: list[_Update]) -> int:
        n_events = 0
        plain: list[dict[str, Any]] = []
        for u in updates:
            j = u.job
            values = dict(u.values)
            if u.analysis is not None and u.analysis.new_remote_id is not None:
                values["remote_id"] = u.analysis.new_remote_id
            if u.analysis is not None and u.analysis.kill_cause is not None and u.new_state == JobState.EVENT:
                values["kill_cause"] = u.analysis.kill_cause.value
            if u.new_state == j.state and not values:
                continue
            if u.analysis is None and u.event is None:
                plain.append({"id": j.id, "old": j.state, "new": u.new_state} | values)
                continue
            if not change_state(conn, j.id, j.state, u.new_state, **values):
                continue
            ev = u.event
            an = u.analysis
            if an is not None and an.code:
                create_event(conn, "job", an.code, state="open" if an.open else "closed", job_id=j.id,
                             cluster_id=self.cid, campaign_id=j.campaign_id, message=an.message,
                             checked="no" if an.open else "yes")
                n_events += int(an.open)
                for code, msg in an.notes:
                    create_event(conn, "notify", code, state="closed", job_id=j.id, cluster_id=self.cid,
                                 campaign_id=j.campaign_id, message=msg, checked="yes")
                if an.decrease_affinity:
                    decrease_affinity(conn, j.param_id, self.cid)
            elif ev is not None:
                create_event(conn, "job", ev[0], job_id=j.id, cluster_id=self.cid, campaign_id=j.campaign_id,
                             message=ev[1])
                n_events += 1
        change_states(conn, plain)
        if n_events:
            self._wake(conn, "COLOMBO")
            self._wake(conn, "JUDAS")
        return n_events

    # ------------------------------------------------------------------ submission
    def submit(self, res: CycleResult, closed: set[int]) -> None:
        assert self.adapter is not None
        with self.engine.begin() as conn:
            todo = [j for j in db.jobs_in_states(conn, self.cid, ["to_launch"]) if j.campaign_state != "cancelled"]
            bl = campaign_blacklists(conn, self.cid)
            todo = [j for j in todo if (self.cid, j.campaign_id) not in bl]
            if not todo:
                todo = self._take(conn, closed, res)
        if not todo:
            return
        with self.engine.connect() as conn:
            props = db.properties(conn, {j.campaign_id for j in todo}, self.cid)
            sbe = db.semi_best_effort_killed(conn, [j.param_id for j in todo if j.options.semi_best_effort], self.cid)
        groups: dict[tuple[Any, ...], list[db.RunnerJob]] = {}
        for j in todo:
            if j.tag in ("prologue", "epilogue"):
                groups[("single", j.id)] = [j]
                continue
            be = j.options.besteffort
            if j.param_id in sbe:
                be = False  # semi-best-effort: a task killed as best-effort runs as a normal job
            # temporal grouping reads its sub-jobs' state files: not where the cluster serves no files
            grouping = j.options.temporal_grouping and self.adapter.reads_files
            groups.setdefault((j.campaign_id, be, grouping), []).append(j)
        submitted_by_campaign: dict[int, int] = {}
        for key, group in groups.items():
            p = props.get(group[0].campaign_id, {})
            if key[0] == "single":
                n = self._submit_group(group, self._single_request(group[0], p), "single")
            elif key[2]:
                n = self._submit_batch(group, p, key[1])
            else:
                n = self._submit_group(group, self._array_request(group, p, key[1]), "array")
            if n:
                submitted_by_campaign[group[0].campaign_id] = submitted_by_campaign.get(group[0].campaign_id, 0) + n
            res.submitted += n
        self._increase_taps(submitted_by_campaign, props)

    def _take(self, conn: Connection, closed: set[int], res: CycleResult) -> list[db.RunnerJob]:
        """get_next (spec §7.4): one campaign, up to its tap rate, then the atomic take."""
        bl = campaign_blacklists(conn, self.cid)
        taps: dict[int, dbtaps.Tap] = {}
        nightly_ok = in_nightly_window(self.conf)
        chosen: list[int] = []
        chosen_campaign: int | None = None
        seen = 0
        skip: set[int] = set()  # campaigns that cannot be served now: the query leaves them out
        rescan = True
        while rescan:  # one query, plus one per campaign skipped at the head of the queue
            rescan = False
            queue = dbqueue.iter_queued_tasks(conn, self.cid, exclude=skip)
            for q in queue:
                seen += 1
                if chosen_campaign is None:
                    verdict = self._servable(conn, q, bl, taps, closed, nightly_ok)
                    if verdict == "hold":
                        break  # a tap in its grace period holds the queue (spec §7.4)
                    if verdict == "skip":
                        skip.add(q.campaign_id)
                        rescan = True
                        break
                    chosen_campaign = q.campaign_id
                if q.campaign_id != chosen_campaign or len(chosen) >= taps[chosen_campaign].rate:
                    break
                chosen.append(q.queue_id)
        res.queued = seen > 0
        if not seen:
            return []
        # Is the queue running low? Look just far enough past what is taken to know.
        want = len(chosen) + 2 * max(len(chosen), 1)
        for _ in queue:
            seen += 1
            if seen >= want:
                break
        queue.close()
        seen += len(skip)  # (skipped campaigns have queued tasks: not "empty")
        ids = dbqueue.take_tasks(conn, self.cid, chosen)
        if len(ids) < len(chosen) / 2 or seen - len(ids) < 2 * max(len(ids), 1):
            self._wake(conn, "METASCHEDULER")  # the queue runs low: refill it now
        return db.jobs_by_ids(conn, ids)

    def _servable(self, conn: Connection, q: dbqueue.QueuedTask, bl: Any, taps: dict[int, dbtaps.Tap],
                  closed: set[int], nightly_ok: bool) -> str:
        """May this queued task's campaign be submitted now: "ok", "skip" (not now: look at
        the next campaign) or "hold" (its tap is in its grace period: submit nothing)."""
        if q.campaign_state != "in_treatment" or (self.cid, q.campaign_id) in bl:
            return "skip"
        if RunOptions.stored(q.runner_options).nightly and not nightly_ok:
            return "skip"
        tap = taps.get(q.campaign_id)
        if tap is None:
            tap = (dbtaps.get_taps(conn, self.cid, [q.campaign_id]).get(q.campaign_id)
                   or dbtaps.get_or_create_tap(conn, self.cid, q.campaign_id, self.conf))
            taps[q.campaign_id] = tap
        if not tap.is_open or q.campaign_id in closed:
            return "hold" if dbtaps.in_grace_period(tap, self.conf) else "skip"
        if self.pending.get(q.campaign_id, 0) >= 2 * tap.rate:
            return "skip"  # two arrays already wait for the cluster's scheduler: let it catch up
        return "ok"

    def _common(self, p: dict[str, str], besteffort: bool) -> dict[str, Any]:
        types = [t for t in (p.get("cluster_job_type") or "").split(",") if t.strip()]
        if besteffort:
            types.append("besteffort")
        return {"types": types, "property": p.get("properties"), "project": p.get("project")}

    def _single_request(self, j: db.RunnerJob, p: dict[str, str]) -> JobRequest:
        wall = p.get(f"{j.tag}_walltime") or p.get("walltime")
        c = self._common(p, False)
        return JobRequest(command=f"export CIGRI_CAMPAIGN_ID={j.campaign_id};"
                          + script_command(_unescape(p.get(j.tag or "", ""))),
                          resources="resource_id=1", walltime=wall, name=f"cigri.{j.campaign_id}",
                          types=c["types"], property=c["property"], project=c["project"], job_ids=[j.id])

    def _directory(self, j: db.RunnerJob, p: dict[str, str]) -> str | None:
        d = p.get("exec_directory")
        return d.replace("{CAMPAIGN_ID}", str(j.campaign_id)) if d else None

    def _task_command(self, j: db.RunnerJob, p: dict[str, str]) -> str:
        """exec_file, or the command running it in the campaign's container on this cluster."""
        block = containers.from_property(p.get("container"))
        if block is None:
            return p.get("exec_file", "")
        return containers.wrap_command(block, self._directory(j, p), p.get("exec_file", ""))

    def _batch_script(self, group: list[db.RunnerJob], p: dict[str, str]) -> str:
        return batch_script(p.get("exec_file", ""), group, containers.from_property(p.get("container")),
                            self._directory(group[0], p))

    def _array_request(self, group: list[db.RunnerJob], p: dict[str, str], be: bool) -> JobRequest:
        j = group[0]
        c = self._common(p, be)
        return JobRequest(command=f"export CIGRI_CAMPAIGN_ID={j.campaign_id};{self._task_command(j, p)}",
                          params=[g.param for g in group], resources=p.get("resources") or "/resource_id=1",
                          walltime=p.get("walltime"), name=f"cigri.{j.campaign_id}",
                          directory=self._directory(j, p), job_ids=[g.id for g in group], **c)

    def _submit_batch(self, group: list[db.RunnerJob], p: dict[str, str], be: bool) -> int:
        with self.engine.begin() as conn:
            bid = new_batch_id(conn)
            change_state(conn, [j.id for j in group], JobState.TO_LAUNCH, JobState.TO_LAUNCH, tag="batch", batch_id=bid)
        for j in group:
            j.tag, j.batch_id = "batch", bid
        j0 = group[0]
        c = self._common(p, be)
        req = JobRequest(command=f"export CIGRI_CAMPAIGN_ID={j0.campaign_id};"
                         + script_command(self._batch_script(sorted(group, key=lambda g: g.id), p)),
                         resources=p.get("resources") or "/resource_id=1", walltime=p.get("walltime"),
                         name=f"cigri.{j0.campaign_id}", directory=self._directory(j0, p),
                         job_ids=sorted(j.id for j in group), **c)
        return self._submit_group(group, req, "batch")

    def _submit_group(self, group: list[db.RunnerJob], req: JobRequest, kind: str) -> int:
        """to_launch -> launching (committed) -> POST -> submitted, or the §7.6 error path."""
        assert self.adapter is not None
        ids = [j.id for j in group]
        user = group[0].grid_user
        with self.engine.begin() as conn:
            n = len(change_state(conn, ids, JobState.TO_LAUNCH, JobState.LAUNCHING))
        if n != len(ids):  # changed meanwhile (cancelled): only submit what is still ours
            with self.engine.connect() as conn:
                still = {j.id for j in db.jobs_in_states(conn, self.cid, ["launching"])}
            group = [j for j in group if j.id in still]
            if not group:
                return 0
            if kind == "array":
                req.params = [g.param for g in group]
            ids = [j.id for j in group]
            req.job_ids = ids if kind != "batch" else sorted(ids)
        try:
            remote_ids = self.adapter.submit(req, user)
        except ClusterAPIError as e:
            self._submit_failed(group, e)
            return 0
        with self.engine.begin() as conn:
            t = now()
            if kind == "batch":
                pairs = [(j, remote_ids[0] if remote_ids else None) for j in group]
            else:
                pairs = list(zip(group, list(remote_ids) + [None] * (len(group) - len(remote_ids)), strict=False))
            # jobs without an id are left `launching`: the next cycle's reconciliation finds or resubmits them
            change_states(conn, [{"id": j.id, "old": "launching", "new": "submitted", "remote_id": int(rid),
                                       "submission_time": t, "cluster_id": self.cid}
                                      for j, rid in pairs if rid is not None])
        log.info("Submitted %s %s job(s) of campaign %s on %s", len(group), kind, group[0].campaign_id, self.name)
        return sum(1 for _, rid in pairs if rid is not None)

    def _submit_failed(self, group: list[db.RunnerJob], e: ClusterAPIError) -> None:
        ids = [j.id for j in group]
        log.warning("Could not submit jobs %s on %s: %s", ids, self.name, e)
        with self.engine.begin() as conn:
            self._cluster_event(conn, e, f"Submitting jobs {ids[:10]}")
            if e.ambiguous or isinstance(e, ClusterAPITimeout):
                # the cluster may have accepted it (no answer, or one that proves nothing): stay
                # `launching`, the next cycle reconciles with what the cluster has
                return
            if isinstance(e, ClusterAPIConnectionError):
                code, msg = "RESUBMIT", f"Resubmit cause: connection error at submission ({e.code}: {e})"
            elif isinstance(e, ClusterAPITooLarge):
                code, msg = "RUNNER_SUBMIT_TOO_LARGE", ("Could not submit the jobs. Your parameters string is "
                                                       "maybe too large. Consider indexing your parameters.")
            elif isinstance(e, TokenNotFound):
                code, msg = "RUNNER_SUBMIT_TOKEN_NOT_FOUND", ("No token for this cluster. Please, use the "
                                                             "'gridtoken' command to add one.")
            elif isinstance(e, ClusterAPIPermissionDenied):
                code, msg = "RUNNER_SUBMIT_PERMISSION_DENIED", f"Permission denied at submission: {e}"
            else:
                code, msg = "RUNNER_SUBMIT_ERROR", f"Could not submit jobs {ids} on {self.name}: {e}"
            for j in group:
                if change_state(conn, j.id, JobState.LAUNCHING, JobState.EVENT):
                    create_event(conn, "job", code, job_id=j.id, cluster_id=self.cid, campaign_id=j.campaign_id,
                                 message=msg)
            self._wake(conn, "COLOMBO")
            self._wake(conn, "JUDAS")

    def _increase_taps(self, submitted: dict[int, int], props: dict[int, dict[str, str]]) -> None:
        """Grow the array size of the first submitted campaign whose tap is open (spec §7.3)."""
        if not submitted:
            return
        factor = float(self.conf.get("RUNNER_TAP_INCREASE_FACTOR"))
        with self.engine.begin() as conn:
            taps = dbtaps.get_taps(conn, self.cid, list(submitted))
            for cid, n in submitted.items():
                tap = taps.get(cid)
                if tap is None or not tap.is_open or tap.rate >= n * factor + 1:
                    continue
                grouping = props.get(cid, {}).get("temporal_grouping") == "true"
                dbtaps.increase_rate(conn, tap, self.conf, db.avg_duration(conn, cid) if grouping else None,
                                     grouping)
                break


def run_forever(runner: Runner, stop: Callable[[], bool], waiter: Any = None) -> None:
    """The daemon loop: no sleep after a submitting cycle, a short one while jobs are in flight
    or queued, RUNNER_MIN_CYCLE_DURATION when idle (woken early by queued work)."""
    conf = runner.conf
    idle = float(conf.get("RUNNER_MIN_CYCLE_DURATION"))
    busy = min(1.0, idle)
    while not stop():
        try:
            res = runner.run_cycle()
        except ClusterGone:
            raise
        except Exception:  # noqa: BLE001 - one bad cycle must not kill the runner
            log.exception("Runner cycle of %s failed", runner.name)
            res = CycleResult(in_flight=1)
            time.sleep(busy)
        if res.submitted:
            continue
        delay = busy if (res.in_flight or res.queued) else idle
        deadline = time.monotonic() + delay
        while not stop() and time.monotonic() < deadline:
            step = min(0.5, deadline - time.monotonic())
            if waiter is not None:
                if waiter.wait(step):
                    break
            else:
                time.sleep(max(step, 0))
            if delay == idle and runner.cluster is not None:
                with runner.engine.connect() as conn:
                    if dbqueue.has_work(conn, runner.cluster.id):
                        break
