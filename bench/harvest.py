#!/usr/bin/env python3
"""Harvest benchmark: does CiGri fill the idle cores of real clusters with best-effort
tasks without disturbing their normal jobs? (issue #15)

  sudo python3 bench/harvest.py oar            # the OAR testbed: c1 (32 cores), c2, c3 (8)
  sudo python3 bench/harvest.py slurm          # the Slurm testbed (its own cluster)
  python3 bench/harvest.py report DIR          # tables and PNG again from a run's records

One run, two phases on the same testbed:
  A. a normal-job workload (seeded generator, or --swf FILE) replayed for --minutes,
     submitted directly to the batch system by alice and bob (oarsub / sbatch), no CiGri;
  B. the real CiGri engine (cigri-almighty, a scratch PostgreSQL database, the production
     defaults of cigri.conf) runs one large best-effort campaign on every cluster (tasks of
     --task-seconds, default 10..180 s); once the clusters are full, the same workload is
     replayed again.
Everything is then measured from the batch system's own records (OAR's jobs, assigned
resources, resource and event logs; Slurm's job records): per cluster and in total, the
core-seconds available, used by normal jobs, by CiGri tasks that completed, wasted by
CiGri tasks that were killed, idle; the harvest ratio (useful CiGri core-seconds / the
core-seconds the normal jobs left idle); where the idle core-seconds went (CiGri had
nothing waiting in the batch system, or it had but the batch system did not start it);
the normal jobs' waits in B against A (the disturbance) and what the kills cost them.
Printed as tables; drawn as a PNG (cores over time per cluster); records, workload (SWF)
and figures are kept in --out.

How long: phase A lasts --minutes plus the time its last jobs wait to start; phase B adds
the fill-up (~1 min) and the drain of the CiGri tasks still running at the end (up to the
longest task). Default (--minutes 10): about 25 minutes; --minutes 2: about 8 minutes.
The testbed is held for the whole run (/tmp/cigri-oar.lock, /tmp/cigri-slurm.lock): other
engineers' and CI's tests wait for it.

From a clean checkout, as root: the first run builds .venv (tools/venv-setup plus the
`bench` extra, matplotlib, pinned in constraints.txt), starts PostgreSQL (tools/pg-setup) and
the testbed (tools/*-testbed up), then re-runs itself in .venv."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from workload import Job, generate, read_swf, write_swf  # noqa: E402

PG_BASE = os.environ.get("CIGRI_TEST_PG", "postgresql+psycopg://cigri:cigri@127.0.0.1:5432")
RIG_ENV = Path("/etc/oar-rig/rig.env")
RIG_RUN = Path("/run/oar-rig")
WORK = "cigri_harvest"  # in alice's home: the campaign's task and its OAR output files
NORMAL_PREFIX = "harvest"


def say(msg: str) -> None:
    print(f"[harvest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ============================================================================ bootstrap
def bootstrap(testbed: str) -> None:
    """From a clean checkout: PostgreSQL, the testbed, .venv with the bench extra; then
    re-exec in .venv (once)."""
    if os.environ.get("CIGRI_HARVEST_BOOTSTRAPPED") == "1":
        return
    if os.geteuid() != 0:
        sys.exit("bench/harvest.py runs as root: it submits jobs as alice and bob and starts the testbed")
    venv_py = ROOT / ".venv" / "bin" / "python"
    say("PostgreSQL (tools/pg-setup)")
    subprocess.run([str(ROOT / "tools" / "pg-setup")], check=True, stdout=subprocess.DEVNULL)
    tool = ROOT / "tools" / f"{testbed}-testbed" / f"{testbed}-testbed"
    say(f"{testbed} testbed ({tool.relative_to(ROOT)} up)")
    subprocess.run([str(tool), "up"], check=True, stdout=subprocess.DEVNULL)
    say(".venv (tools/venv-setup, pip install -c constraints.txt -e '.[bench]')")
    subprocess.run([str(ROOT / "tools" / "venv-setup")], check=True)
    subprocess.run([str(venv_py), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c",
                    str(ROOT / "constraints.txt"), "-e", f"{ROOT}[bench]"], check=True,
                   env=dict(os.environ, PIP_CONSTRAINT=str(ROOT / "constraints.txt")))
    subprocess.run([str(venv_py), str(ROOT / "tools" / "check-pins"), str(ROOT / "constraints.txt"), "test,bench"],
                   check=True)
    os.environ["CIGRI_HARVEST_BOOTSTRAPPED"] = "1"
    os.execv(str(venv_py), [str(venv_py), str(Path(__file__).resolve()), *sys.argv[1:]])


@contextlib.contextmanager
def testbed_lock(path: str) -> Iterator[None]:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {path} (someone else uses the testbed)")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ============================================================================ records
@dataclass
class JobRec:
    """One batch job as the batch system recorded it (epoch seconds)."""

    id: int
    kind: str  # normal | cigri | other
    cores: int
    submit: int
    start: int | None
    stop: int | None
    outcome: str  # completed | killed | failed | deleted | active
    resources: list[int] = field(default_factory=list)
    index: int | None = None  # workload index of a normal job
    user: str = ""


@dataclass
class ClusterRecords:
    cores: int
    avail: list[list[int]]  # [start, stop) intervals with the number of usable cores
    jobs: list[JobRec]


def _jobrec(d: dict[str, Any]) -> JobRec:
    return JobRec(**d)


# ============================================================================ OAR testbed
def _env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip().strip('"')
    return out


class Bed:
    """What the benchmark needs from a testbed's batch system."""

    kind = ""
    lock = ""
    clusters: dict[str, int]

    def max_ids(self) -> dict[str, int]:
        """Per cluster, the highest job id so far: later ones belong to this run."""
        raise NotImplementedError

    def active(self, c: str, after: int = 0) -> list[tuple[int, str, str, str]]:
        """(id, state, queue/partition, name) of the unfinished jobs above `after`; the state
        is "Waiting" for a job that has not started."""
        raise NotImplementedError

    def submit(self, job: Job, tag: str) -> int:
        raise NotImplementedError

    def delete(self, c: str, ids: list[int]) -> None:
        raise NotImplementedError

    def started(self, c: str, ids: list[int]) -> dict[int, int | None]:
        """id -> start time (None while it has not started)."""
        raise NotImplementedError

    def busy_cores(self, c: str) -> int:
        raise NotImplementedError

    def records(self, c: str, after: int, t_end: int) -> ClusterRecords:
        raise NotImplementedError

    def cigri_clusters(self) -> list[dict[str, Any]]:
        """The `clusters` rows CiGri gets."""
        raise NotImplementedError

    def cpu_kind(self, uid: int, cmd: str) -> str | None:
        """"batch_api", "batch" or None for a process of the machine."""
        raise NotImplementedError


class OarBed(Bed):
    kind = "oar"
    lock = "/tmp/cigri-oar.lock"
    ACTIVE = ("Waiting", "Hold", "toLaunch", "toError", "toAckReservation", "Launching", "Running",
              "Suspended", "Resuming", "Finishing")

    def __init__(self) -> None:
        if not RIG_ENV.exists():
            sys.exit(f"no {RIG_ENV}: start the OAR testbed (sudo tools/oar-testbed/oar-testbed up)")
        env = _env_file(RIG_ENV)
        n = int(env.get("RIG_CLUSTERS", "3"))
        self.clusters = {f"c{i}": int(env.get(f"RIG_CORES_c{i}", "8")) for i in range(1, n + 1)}
        self.apis = {c: env.get(f"RIG_API_{c}", "") for c in self.clusters}
        self.pg_port = int(env.get("PG_PORT", "5432"))
        self._conns: dict[str, Any] = {}

    # -- plumbing
    def _conf(self, c: str) -> dict[str, str]:
        path = Path("/etc/oar/oar.conf") if c == "c1" else Path(f"/etc/oar-rig/{c}/etc-oar/oar.conf")
        return _env_file(path)

    def db(self, c: str) -> Any:
        import psycopg

        conn = self._conns.get(c)
        if conn is None or conn.closed:
            k = self._conf(c)
            conn = psycopg.connect(host="127.0.0.1", port=self.pg_port, dbname=k["DB_BASE_NAME"],
                                   user=k.get("DB_BASE_LOGIN_RO") or k["DB_BASE_LOGIN"],
                                   password=k.get("DB_BASE_PASSWD_RO") or k["DB_BASE_PASSWD"], autocommit=True)
            self._conns[c] = conn
        return conn

    def _q(self, c: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.db(c).cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def _cli(self, c: str, argv: list[str], user: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [] if c == "c1" else ["nsenter", f"--mount={RIG_RUN}/ns/{c}", "--"]
        if user:
            cmd += ["runuser", "-u", user, "--"]
        return subprocess.run(cmd + argv, capture_output=True, text=True, timeout=120, cwd="/")

    # -- what the bench needs
    def max_ids(self) -> dict[str, int]:
        return {c: int(self._q(c, "SELECT COALESCE(max(job_id), 0) FROM jobs")[0][0]) for c in self.clusters}

    def active(self, c: str, after: int = 0) -> list[tuple[int, str, str, str]]:
        return [(int(r[0]), "Waiting" if r[1] == "Hold" else r[1], r[2], r[3] or "") for r in self._q(
            c, "SELECT job_id, state, queue_name, job_name FROM jobs WHERE job_id > %s AND state = ANY(%s)"
               " ORDER BY job_id", after, list(self.ACTIVE))]

    def submit(self, job: Job, tag: str) -> int:
        walltime = f"{job.walltime // 3600}:{job.walltime % 3600 // 60:02d}:{job.walltime % 60:02d}"
        home = Path("/home") / job.user
        r = self._cli(job.cluster, ["oarsub", "-n", f"{NORMAL_PREFIX}.{tag}.{job.index}", "-d", str(home),
                                    "-O", "/dev/null", "-E", "/dev/null",
                                    "-l", f"/resource_id={job.cores},walltime={walltime}",
                                    f"sleep {job.runtime}"], user=job.user)
        for line in r.stdout.splitlines():
            if line.startswith("OAR_JOB_ID="):
                return int(line.split("=", 1)[1])
        raise RuntimeError(f"oarsub on {job.cluster} failed: {(r.stdout + r.stderr).strip()[-300:]}")

    def delete(self, c: str, ids: list[int]) -> None:
        for i in range(0, len(ids), 200):
            self._cli(c, ["oardel", *[str(x) for x in ids[i:i + 200]]])

    def started(self, c: str, ids: list[int]) -> dict[int, int | None]:
        rows = self._q(c, "SELECT job_id, state, start_time FROM jobs WHERE job_id = ANY(%s)", ids)
        return {int(i): (int(s) if s and st not in ("Waiting", "Hold") else None) for i, st, s in rows}

    def busy_cores(self, c: str) -> int:
        return int(self._q(c, "SELECT count(*) FROM jobs j JOIN assigned_resources a ON "
                              "a.moldable_job_id = j.assigned_moldable_job WHERE j.state = ANY(%s) "
                              "AND j.state NOT IN ('Waiting', 'Hold')", list(self.ACTIVE))[0][0])

    def records(self, c: str, after: int, t_end: int) -> ClusterRecords:
        res = self._q(c, "SELECT resource_id FROM resources WHERE type = 'default'")
        default = {int(r[0]) for r in res}
        logs = self._q(c, "SELECT l.resource_id, l.value, l.date_start, l.date_stop FROM resource_logs l "
                          "JOIN resources r ON r.resource_id = l.resource_id "
                          "WHERE l.attribute = 'state' AND r.type = 'default'")
        avail = [[int(s), int(e) if e else t_end, 1] for _rid, v, s, e in logs if v == "Alive"]
        rows = self._q(c, """
            SELECT j.job_id, j.job_name, j.job_user, j.queue_name, j.state, j.exit_code,
                   j.submission_time, j.start_time, j.stop_time,
                   COALESCE((SELECT array_agg(a.resource_id ORDER BY a.resource_id) FROM assigned_resources a
                             WHERE a.moldable_job_id = j.assigned_moldable_job), '{}'),
                   EXISTS (SELECT 1 FROM event_logs e WHERE e.job_id = j.job_id AND e.type = 'BESTEFFORT_KILL')
            FROM jobs j WHERE j.job_id > %s ORDER BY j.job_id""", after)
        jobs = []
        for jid, name, user, queue, state, code, sub, start, stop, resources, killed in rows:
            name = name or ""
            if name.startswith(NORMAL_PREFIX + "."):
                kind, index = "normal", int(name.rsplit(".", 1)[1])
            elif queue == "besteffort" and name.startswith("cigri."):
                kind, index = "cigri", None
            else:
                kind, index = "other", None
            if state in self.ACTIVE:
                outcome = "active"
            elif state == "Terminated" and not code:
                outcome = "completed"  # even when a kill was asked for as it was ending
            elif killed:
                outcome = "killed"
            elif state == "Terminated":
                outcome = "failed"
            else:
                outcome = "deleted"
            began = int(start) if start and state not in ("Waiting", "Hold") else None
            res_ids = [int(r) for r in resources if int(r) in default]
            jobs.append(JobRec(int(jid), kind, len(res_ids), int(sub), began,
                               int(stop) if stop and began else None, outcome, res_ids, index, user or ""))
        return ClusterRecords(len(default), avail, jobs)

    # -- CiGri's view of the clusters
    def cigri_clusters(self) -> list[dict[str, Any]]:
        return [{"name": c, "api_url": self.apis[c], "batch": "oar2_5", "api_auth_type": "none",
                 "api_auth_header": "X_REMOTE_IDENT", "resource_unit": "core", "api_chunk_size": 100,
                 "api_limit": 100, "properties": f"cluster='{c}'", "enabled": True} for c in self.clusters]

    def cpu_kind(self, uid: int, cmd: str) -> str | None:
        if "oarapi.pl" in cmd:
            return "batch_api"
        if uid == _uid("oar") or "/usr/lib/oar/" in cmd or "oarexec" in cmd or "oar-rig" in cmd:
            return "batch"
        return None


# ============================================================================ Slurm testbed
SLURM_ENV = Path("/etc/slurm-testbed/testbed.env")


class SlurmBed(Bed):
    """The Slurm testbed (tools/slurm-testbed): one cluster. Its records are slurmctld's job
    table (`squeue --json --states=all`: there is no slurmdbd; finished jobs stay MinJobAge,
    an hour); CiGri's best-effort tasks go to the CANCEL partition, whose preempted jobs end
    PREEMPTED with their own start and end times (the REQUEUE partition reuses the job id, and
    the run before the requeue leaves no record)."""

    kind = "slurm"
    lock = "/tmp/cigri-slurm.lock"
    NAME = "sl"
    ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
             "OUT_OF_MEMORY")

    def __init__(self) -> None:
        if not SLURM_ENV.exists():
            sys.exit(f"no {SLURM_ENV}: start the Slurm testbed (sudo tools/slurm-testbed/slurm-testbed up)")
        self.env = _env_file(SLURM_ENV)
        self.partition_normal = self.env.get("SLURM_TESTBED_PARTITION_NORMAL", "normal")
        self.partition_be = self.env.get("SLURM_TESTBED_PARTITION_CANCEL", "bestcancel")
        self.clusters = {self.NAME: sum(self._nodes().values())}
        self._res_ids: dict[str, int] = {}

    def _run(self, argv: list[str], user: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = (["runuser", "-u", user, "--"] if user else []) + argv
        env = dict(os.environ, SLURM_CONF=self.env.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
        r = subprocess.run(cmd, capture_output=True, timeout=120, cwd="/", env=env)
        # other users' job records may hold any bytes (test suites write odd comments)
        return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                           r.stderr.decode(errors="replace"))

    def _table(self, *args: str) -> list[list[str]]:
        """squeue's plain output, one list of fields per job (cheap: polled during the run)."""
        r = self._run(["squeue", "-h", *args])
        return [line.split("|") for line in r.stdout.splitlines() if line.strip()]

    def _nodes(self) -> dict[str, int]:
        """Usable nodes and their CPUs (a node listed once per partition)."""
        out: dict[str, int] = {}
        for line in self._run(["sinfo", "-h", "-N", "-o", "%N %c %t"]).stdout.splitlines():
            name, cpus, state = line.split()
            if not any(state.startswith(s) for s in ("down", "drain", "fail", "maint", "unk")):
                out[name] = int(cpus)
        return out

    def _jobs(self) -> list[dict[str, Any]]:
        """Every job slurmctld still knows, in full (once per phase: it is large)."""
        r = self._run(["squeue", "--json", "--states=all"])
        if r.returncode != 0:
            raise RuntimeError(f"squeue failed: {r.stderr.strip()[-300:]}")
        return [j for j in json.loads(r.stdout).get("jobs") or [] if not j.get("array_task_string")]

    def max_ids(self) -> dict[str, int]:
        ids = [int(f[0].split("_")[0]) for f in self._table("--states=all", "-o", "%F|%A")]
        return {self.NAME: max(ids, default=0)}

    def active(self, c: str, after: int = 0) -> list[tuple[int, str, str, str]]:
        out = []
        for jid, state, part, name in self._table("-r", "-o", "%A|%T|%P|%j"):
            if jid.isdigit() and int(jid) > after and state not in self.ENDED:
                out.append((int(jid), "Waiting" if state == "PENDING" else state, part, name))
        return out

    def submit(self, job: Job, tag: str) -> int:
        home = Path("/home") / job.user
        r = self._run(["sbatch", "--parsable", "-p", self.partition_normal, "-n", str(job.cores),
                       "-t", f"{job.walltime // 60}:{job.walltime % 60:02d}",
                       "-J", f"{NORMAL_PREFIX}.{tag}.{job.index}", "-D", str(home), "-o", "/dev/null",
                       "-e", "/dev/null", "--wrap", f"sleep {job.runtime}"],
                      user=job.user)
        first = r.stdout.strip().split(";")[0]
        if r.returncode != 0 or not first.isdigit():
            raise RuntimeError(f"sbatch failed: {(r.stdout + r.stderr).strip()[-300:]}")
        return int(first)

    def delete(self, c: str, ids: list[int]) -> None:
        for i in range(0, len(ids), 200):
            self._run(["scancel", *[str(x) for x in ids[i:i + 200]]])

    def started(self, c: str, ids: list[int]) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        rows = self._table("--states=all", "-j", ",".join(str(i) for i in ids), "-o", "%A|%T|%S")
        for jid, state, start in rows:
            began = state != "PENDING" and start not in ("N/A", "Unknown", "")
            out[int(jid)] = int(time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S"))) if began else None
        return out

    def busy_cores(self, c: str) -> int:
        return sum(int(f[0]) for f in self._table("-t", "RUNNING,COMPLETING", "-o", "%C") if f[0].isdigit())

    def _resources(self, j: dict[str, Any]) -> list[int]:
        out = []
        for node in (j.get("job_resources") or {}).get("allocated_nodes") or []:
            for sock, d in (node.get("sockets") or {}).items():
                for core in (d.get("cores") or {}):
                    key = f"{node.get('nodename')}:{sock}:{core}"
                    out.append(self._res_ids.setdefault(key, len(self._res_ids) + 1))
        return sorted(out)

    def records(self, c: str, after: int, t_end: int) -> ClusterRecords:
        nodes = self._nodes()
        cores = sum(nodes.values())
        jobs = []
        for j in self._jobs():
            if int(j["job_id"]) <= after:
                continue
            name, state = str(j.get("name") or ""), str(j["job_state"])
            if name.startswith(NORMAL_PREFIX + "."):
                kind, index = "normal", int(name.rsplit(".", 1)[1])
            elif name.startswith("cigri.") and j.get("partition") == self.partition_be:
                kind, index = "cigri", None
            else:
                kind, index = "other", None
            code = (j.get("exit_code") or 0) if isinstance(j.get("exit_code"), int) else 0
            outcome = {"COMPLETED": "completed" if not code else "failed", "PREEMPTED": "killed",
                       "CANCELLED": "deleted"}.get(state, "active" if state not in self.ENDED else "failed")
            start = int(j.get("start_time") or 0)
            began = start if start and state != "PENDING" and (state != "CANCELLED" or j.get("nodes")) else None
            stop = int(j.get("end_time") or 0) if began and state in self.ENDED else None
            jobs.append(JobRec(int(j["job_id"]), kind, int(j.get("cpus") or 0) if began else 0,
                               int(j.get("submit_time") or 0), began, stop, outcome, self._resources(j), index,
                               str(j.get("user_name") or "")))
        return ClusterRecords(cores, [[0, t_end, cores]], jobs)

    def cigri_clusters(self) -> list[dict[str, Any]]:
        return [{"name": self.NAME, "api_url": self.env["SLURM_TESTBED_URL"], "batch": "slurm",
                 "api_auth_type": "jwt", "resource_unit": "core", "api_chunk_size": 100, "api_limit": 100,
                 "enabled": True, "jwt_key_file": self.env["SLURM_TESTBED_JWT_KEY"],
                 "normal_partition": self.partition_normal, "besteffort_partition": self.partition_be,
                 "besteffort_mode": "cancel"}]

    def cpu_kind(self, uid: int, cmd: str) -> str | None:
        if "slurmrestd" in cmd:
            return "batch_api"
        if any(d in cmd for d in ("slurmctld", "slurmd", "slurmstepd", "munged")):
            return "batch"
        return None


# ============================================================================ CiGri
class Cigri:
    """The real engine: cigri-almighty on a scratch database, with cigri.conf's defaults."""

    def __init__(self, bed: Bed, workdir: Path):
        self.bed: Bed = bed
        self.dir = workdir
        self.db_name = f"cigri_harvest_{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.engine: Any = None

    def start(self) -> None:
        from cigri.config import Conf, set_conf
        from cigri.db.admin import create_scratch_database
        from cigri.db.engine import make_engine
        from cigri.db.schema import clusters

        values = create_scratch_database(PG_BASE, self.db_name)
        values |= {"LOG_FILE": str(self.dir / "cigri.log"), "LOG_LEVEL": "INFO",
                   "PID_FILE": str(self.dir / "almighty.pid")}
        conf_file = self.dir / "cigri.conf"
        conf_file.write_text("".join(f'{k}="{v}"\n' for k, v in values.items()))
        self.conf = Conf(str(conf_file))
        set_conf(self.conf)
        self.engine = make_engine(self.conf)
        with self.engine.begin() as c:
            for row in self.bed.cigri_clusters():
                c.execute(clusters.insert().values(**row))
        out = open(self.dir / "almighty.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "cigri-almighty")],
                                     env=dict(os.environ, CIGRICONFFILE=str(conf_file), PYTHONUNBUFFERED="1"),
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def submit_campaign(self, durations: list[int], walltime: int) -> int:
        from cigri.campaigns import submit_campaign

        home = Path("/home/alice") / WORK
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        task = home / "task"
        task.write_text('#!/bin/sh\n# a harvest benchmark task: $1 = name, $2 = seconds\nexec sleep "$2"\n')
        task.chmod(0o755)
        for p in (home, task):
            shutil.chown(p, "alice", "alice")
        wall = f"{walltime // 3600:02d}:{walltime % 3600 // 60:02d}:{walltime % 60:02d}"
        per_cluster = {"type": "best-effort", "walltime": wall, "exec_directory": str(home)}
        jdl = {"name": "harvest", "exec_file": str(task), "params": [f"t{i} {d}" for i, d in enumerate(durations)],
               "clusters": {c: dict(per_cluster) for c in self.bed.clusters}}
        return submit_campaign(self.engine, jdl, "alice", self.conf)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def drop(self) -> None:
        from cigri.db.admin import drop_scratch_database
        from cigri.db.engine import reset_engines

        self.stop()
        if self.engine is not None:
            self.engine.dispose()
        reset_engines()
        with contextlib.suppress(Exception):
            drop_scratch_database(PG_BASE, self.db_name)


# ============================================================================ CPU
CLK = os.sysconf("SC_CLK_TCK")
CPU_KINDS = ("cigri", "batch", "batch_api", "postgres", "bench", "other")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the machine since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / CLK, sum(f[:8]) / CLK


class CpuMeter:
    """Who used the machine's CPU during a window: the testbed shares its few cores between
    the batch system, CiGri, PostgreSQL and whatever else runs (other users' tests). Processes
    are sampled every few seconds (their own utime + stime); what processes living less than a
    sample period used is left unattributed."""

    def __init__(self, bed: Bed, cigri_session: int | None = None, period: float = 3.0):
        self.bed = bed
        self.cigri_session = cigri_session
        self.period = period
        self.first: dict[tuple[int, int], float] = {}
        self.last: dict[tuple[int, int], float] = {}
        self.kind: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.machine: tuple[float, float] = (0.0, 0.0)
        self.t_start = 0.0

    def _classify(self, pid: int, uid: int, session: int, cmd: str) -> str:
        if pid == os.getpid():
            return "bench"
        if self.cigri_session is not None and session == self.cigri_session:
            return "cigri"
        batch = self.bed.cpu_kind(uid, cmd)
        if batch is not None:
            return batch
        if uid == _uid("postgres"):
            return "postgres"
        return "other"

    def sample(self, first: bool = False) -> None:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                st = (d / "stat").read_text().rsplit(")", 1)[1].split()
                key = (int(d.name), int(st[19]))  # (pid, start time): pids are reused
                cpu = (int(st[11]) + int(st[12])) / CLK
                if key not in self.kind:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    self.kind[key] = self._classify(int(d.name), d.stat().st_uid, int(st[3]), cmd)
                    # a process born during the window used all its CPU in it
                    self.first[key] = cpu if first else 0.0
            except (OSError, IndexError, ValueError):
                continue
            self.last[key] = cpu

    def start(self) -> None:
        self.machine = _machine_cpu()
        self.t_start = time.time()
        self.sample(first=True)

        def loop() -> None:
            while not self._stop.wait(self.period):
                self.sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        busy, total = _machine_cpu()
        out: dict[str, float] = {"wall": time.time() - self.t_start, "machine_busy": busy - self.machine[0],
                                 "machine_total": total - self.machine[1]}
        for key, cpu in self.last.items():
            k = self.kind[key]
            out[k] = out.get(k, 0.0) + max(cpu - self.first.get(key, 0.0), 0.0)
        out["unattributed"] = max(out["machine_busy"] - sum(out.get(k, 0.0) for k in CPU_KINDS), 0.0)
        return out


def _uid(name: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return -1


# ============================================================================ the run
def replay(bed: Bed, jobs: list[Job], t0: float, tag: str) -> dict[int, tuple[str, int]]:
    """Submit each job at t0 + its arrival time, as its user; index -> (cluster, id)."""
    ids: dict[int, tuple[str, int]] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def one(j: Job) -> None:
        try:
            rid = bed.submit(j, tag)
        except Exception as e:  # noqa: BLE001 - reported, the job is left out of the comparison
            with lock:
                errors.append(f"job {j.index}: {e}")
            return
        with lock:
            ids[j.index] = (j.cluster, rid)

    with ThreadPoolExecutor(max_workers=6) as pool:
        for j in jobs:
            delay = t0 + j.submit - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, j)
    for e in errors:
        say(f"submission failed: {e}")
    return ids


@dataclass
class Phase:
    name: str
    t0: int
    t1: int
    first_ids: dict[str, int]
    normal_ids: dict[int, tuple[str, int]]
    fill_seconds: float | None = None
    records: dict[str, ClusterRecords] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


def wait_all_started(bed: Bed, ids: dict[int, tuple[str, int]], t1: int, progress: Any = None,
                     at_t1: Any = None) -> None:
    """Until the window is over and every normal job has started (their waits are known)."""
    by_cluster: dict[str, list[int]] = {}
    for c, rid in ids.values():
        by_cluster.setdefault(c, []).append(rid)
    last = 0.0
    while True:
        waiting = sum(1 for c, lst in by_cluster.items() for s in bed.started(c, lst).values() if s is None)
        now = time.time()
        if now >= t1 and at_t1 is not None:
            at_t1()
            at_t1 = None
        if now >= t1 and waiting == 0:
            return
        if now - last >= 60:
            last = now
            extra = progress() if progress else ""
            left = f"{t1 - now:.0f} s left in the window" if now < t1 else "window over"
            say(f"  {left}; {len(ids)} normal jobs submitted, {waiting} waiting{extra}")
        time.sleep(2)


def run_phase(bed: Bed, jobs: list[Job], args: argparse.Namespace, out: Path, with_cigri: bool) -> Phase:
    name = "B" if with_cigri else "A"
    duration = int(args.minutes * 60)
    first = bed.max_ids()
    cigri = Cigri(bed, out) if with_cigri else None
    fill = None
    try:
        if cigri is not None:
            rng = random.Random(args.seed + 1000)
            lo, hi = args.task_seconds
            total = sum(bed.clusters.values())
            mean = (hi - lo) / math.log(hi / lo) if hi > lo else lo
            n = int(total * (duration + 600) / mean * 1.5) + 100
            durations = [int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))) for _ in range(n)]
            cigri.start()
            t_sub = time.time()
            cid = cigri.submit_campaign(durations, walltime=int(hi * 1.2 + 60))
            say(f"phase B: CiGri runs campaign {cid} ({n} tasks of {lo:.0f}-{hi:.0f} s) on "
                f"{', '.join(bed.clusters)}; waiting until it fills the clusters")
            deadline = t_sub + 300
            while time.time() < deadline:
                if not cigri.alive():
                    raise RuntimeError(f"cigri-almighty exited; see {out / 'almighty.out'}")
                if all(bed.busy_cores(c) >= cores for c, cores in bed.clusters.items()):
                    fill = time.time() - t_sub
                    break
                time.sleep(2)
            say(f"phase B: clusters full {fill:.0f} s after the campaign's submission" if fill is not None
                else "phase B: the clusters were still not full after 300 s; starting the workload anyway")
        else:
            say(f"phase A: the workload without CiGri ({len(jobs)} normal jobs over {duration} s)")
        t0 = int(time.time()) + 2
        t1 = t0 + duration

        def progress() -> str:
            if cigri is None:
                return ""
            busy = sum(bed.busy_cores(c) for c in bed.clusters)
            return f"; busy cores {busy}/{sum(bed.clusters.values())}"

        meter = CpuMeter(bed, cigri.proc.pid if cigri is not None and cigri.proc is not None else None)
        cpu: dict[str, float] = {}
        while time.time() < t0:
            time.sleep(0.1)
        meter.start()
        replay_done: dict[int, tuple[str, int]] = {}
        th = threading.Thread(target=lambda: replay_done.update(replay(bed, jobs, t0, name)), daemon=True)
        th.start()
        while th.is_alive():
            th.join(timeout=60)
            if th.is_alive():
                say(f"  phase {name}: t+{time.time() - t0:.0f} s, replaying{progress()}")
        wait_all_started(bed, replay_done, t1, progress, at_t1=lambda: cpu.update(meter.stop()))
        # Every normal job has started: none can kill a CiGri task any more.
        for c in bed.clusters:
            bed.delete(c, [i for i, _s, q, n in bed.active(c, first[c]) if n.startswith(NORMAL_PREFIX + ".")])
        if cigri is not None:
            cigri.stop()
            say("phase B: window over, CiGri stopped; draining its running tasks")
            for c in bed.clusters:
                bed.delete(c, [i for i, s, q, _n in bed.active(c, first[c]) if s == "Waiting"])
            deadline = time.time() + args.task_seconds[1] * 1.2 + 180
            while time.time() < deadline and any(bed.active(c, first[c]) for c in bed.clusters):
                time.sleep(3)
        for c in bed.clusters:
            left = [i for i, *_ in bed.active(c, first[c])]
            if left:
                say(f"  {c}: deleting {len(left)} jobs still active")
                bed.delete(c, left)
        deadline = time.time() + 120
        while time.time() < deadline and any(bed.active(c, first[c]) for c in bed.clusters):
            time.sleep(2)
        ph = Phase(name, t0, t1, first, replay_done, fill, cpu=cpu)
        ph.records = {c: bed.records(c, first[c], int(time.time())) for c in bed.clusters}
        return ph
    finally:
        if cigri is not None:
            cigri.drop()
            shutil.rmtree(Path("/home/alice") / WORK, ignore_errors=True)


# ============================================================================ accounting
@dataclass
class Series:
    """Per-second core counts over the window [t0, t1)."""

    avail: list[int]
    normal: list[int]
    useful: list[int]
    killed: list[int]
    other: list[int]
    cigri_waiting: list[int]
    normal_waiting: list[int]

    @property
    def idle(self) -> list[int]:
        return [max(a - n - u - k - o, 0) for a, n, u, k, o in
                zip(self.avail, self.normal, self.useful, self.killed, self.other, strict=True)]


def _add(arr: list[int], t0: int, a: int | None, b: int | None, v: int) -> None:
    if a is None:
        return
    lo, hi = max(a, t0) - t0, min(b if b is not None else t0 + len(arr), t0 + len(arr)) - t0
    for i in range(max(lo, 0), min(hi, len(arr))):
        arr[i] += v


def series(rec: ClusterRecords, t0: int, t1: int) -> Series:
    n = t1 - t0
    s = Series(*[[0] * n for _ in range(7)])
    for a, b, k in rec.avail:
        _add(s.avail, t0, a, b, k)
    for j in rec.jobs:
        end = j.stop if j.stop is not None else t1
        if j.kind == "normal" or j.kind == "other":
            _add(s.normal, t0, j.start, end, j.cores)
            if j.kind == "normal":
                _add(s.normal_waiting, t0, j.submit, j.start if j.start is not None else end, 1)
        else:
            target = {"completed": s.useful, "killed": s.killed}.get(j.outcome, s.other)
            _add(target, t0, j.start, end, j.cores)
            _add(s.cigri_waiting, t0, j.submit, j.start if j.start is not None else end, 1)
    return s


@dataclass
class Figures:
    available: int = 0
    normal: int = 0
    useful: int = 0
    killed: int = 0
    other: int = 0
    idle: int = 0
    idle_nothing_waiting: int = 0  # CiGri had no job waiting in the batch system
    idle_normal_waiting: int = 0  # CiGri jobs waited, and so did a normal job (cores held for it)
    idle_batch: int = 0  # CiGri jobs waited, no normal job did: the batch system's own latency
    tasks_completed: int = 0
    tasks_killed: int = 0
    tasks_other: int = 0

    @property
    def otherwise_idle(self) -> int:
        return self.available - self.normal

    @property
    def harvest(self) -> float:
        return self.useful / self.otherwise_idle if self.otherwise_idle > 0 else float("nan")

    def __iadd__(self, o: Figures) -> Figures:
        for k in asdict(self):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        return self


def figures(rec: ClusterRecords, t0: int, t1: int) -> Figures:
    s = series(rec, t0, t1)
    f = Figures(sum(s.avail), sum(s.normal), sum(s.useful), sum(s.killed), sum(s.other))
    for idle, cw, nw in zip(s.idle, s.cigri_waiting, s.normal_waiting, strict=True):
        f.idle += idle
        if not cw:
            f.idle_nothing_waiting += idle
        elif nw:
            f.idle_normal_waiting += idle
        else:
            f.idle_batch += idle
    for j in rec.jobs:
        if j.kind != "cigri" or j.start is None or j.start >= t1 or (j.stop is not None and j.stop <= t0):
            continue
        if j.outcome == "completed":
            f.tasks_completed += 1
        elif j.outcome == "killed":
            f.tasks_killed += 1
        else:
            f.tasks_other += 1
    return f


def waits(phase: Phase) -> dict[int, int]:
    """workload index -> seconds the normal job waited (start - submission)."""
    out = {}
    for rec in phase.records.values():
        for j in rec.jobs:
            if j.kind == "normal" and j.index is not None and j.start is not None:
                out[j.index] = j.start - j.submit
    return out


def displaced(phase: Phase) -> dict[int, int]:
    """workload index of a normal job -> CiGri tasks killed to make room for it (killed tasks
    on its resources that stopped between its submission and its start)."""
    out: dict[int, int] = {}
    for rec in phase.records.values():
        killed = [j for j in rec.jobs if j.kind == "cigri" and j.outcome == "killed" and j.stop is not None]
        for j in rec.jobs:
            if j.kind != "normal" or j.index is None or j.start is None:
                continue
            mine = set(j.resources)
            n = sum(1 for k in killed if mine & set(k.resources) and j.submit - 1 <= (k.stop or 0) <= j.start + 1)
            if n:
                out[j.index] = n
    return out


# ============================================================================ report
def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:5.1f} %" if b else "   - "


def report(data: dict[str, Any], out: Path) -> str:
    phases = {p["name"]: _phase_from_json(p) for p in data["phases"]}
    b = phases["B"]
    a = phases.get("A")
    lines = []
    dur = b.t1 - b.t0
    lines.append(f"Harvest benchmark on the {data['testbed']} testbed: {data['workload_jobs']} normal jobs over "
                 f"{dur} s ({data['workload_source']}), CiGri tasks of {data['task_seconds'][0]:.0f}-"
                 f"{data['task_seconds'][1]:.0f} s")
    lines.append(f"command: {data['command']}")
    if b.fill_seconds is not None:
        lines.append(f"CiGri filled the clusters {b.fill_seconds:.0f} s after the campaign's submission")
    lines.append("")
    lines.append("Phase B (with CiGri), core-seconds over the window, from the batch system's records:")
    hdr = (f"{'cluster':8} {'cores':>5} {'available':>10} {'normal':>9} {'CiGri ok':>9} {'killed':>8} "
           f"{'other':>6} {'idle':>8} {'harvest':>8} {'tasks ok':>8} {'killed':>6}")
    lines.append(hdr)
    tot = Figures()
    per = {}
    for c, rec in sorted(b.records.items()):
        f = figures(rec, b.t0, b.t1)
        per[c] = f
        tot += f
        lines.append(f"{c:8} {rec.cores:5d} {f.available:10d} {f.normal:9d} {f.useful:9d} {f.killed:8d} "
                     f"{f.other:6d} {f.idle:8d} {f.harvest:8.3f} {f.tasks_completed:8d} {f.tasks_killed:6d}")
    cores = sum(r.cores for r in b.records.values())
    lines.append(f"{'total':8} {cores:5d} {tot.available:10d} {tot.normal:9d} {tot.useful:9d} {tot.killed:8d} "
                 f"{tot.other:6d} {tot.idle:8d} {tot.harvest:8.3f} {tot.tasks_completed:8d} {tot.tasks_killed:6d}")
    lines.append("")
    oi = tot.otherwise_idle
    lines.append(f"Harvest ratio (useful CiGri core-s / core-s the normal jobs left idle): {tot.harvest:.3f} "
                 f"(target >= 0.95; the physical limit is 1)")
    lines.append(f"Where the other {oi - tot.useful} core-s of the {oi} the normal jobs left went:")
    lines.append(f"  killed CiGri tasks (kill waste)            {tot.killed:8d} core-s {_pct(tot.killed, oi)}"
                 f"  ({tot.tasks_killed} tasks killed, {_pct(tot.tasks_killed, tot.tasks_killed + tot.tasks_completed)}"
                 " of the tasks that ended)")
    lines.append(f"  CiGri tasks failed or cut at the end        {tot.other:8d} core-s {_pct(tot.other, oi)}")
    lines.append(f"  idle, nothing of CiGri's waiting (engine)   {tot.idle_nothing_waiting:8d} core-s "
                 f"{_pct(tot.idle_nothing_waiting, oi)}")
    lines.append(f"  idle, CiGri and normal jobs waiting         {tot.idle_normal_waiting:8d} core-s "
                 f"{_pct(tot.idle_normal_waiting, oi)}  (cores kept for a normal job the scheduler planned)")
    lines.append(f"  idle, CiGri jobs waiting, no normal job     {tot.idle_batch:8d} core-s "
                 f"{_pct(tot.idle_batch, oi)}  (the batch system's launch latency)")
    if a is not None:
        lines.append("")
        wa, wb = waits(a), waits(b)
        common = sorted(set(wa) & set(wb))
        lines.append(f"Disturbance: waits of the {len(common)} normal jobs that started in both phases "
                     f"(start - submission, s)")
        if common:
            ma = statistics.mean(wa[i] for i in common)
            mb = statistics.mean(wb[i] for i in common)
            lines.append(f"  {'':28} {'mean':>7} {'median':>7} {'max':>6}")
            for label, w in (("A, without CiGri", wa), ("B, with CiGri", wb)):
                vals = [w[i] for i in common]
                lines.append(f"  {label:28} {statistics.mean(vals):7.1f} {statistics.median(vals):7.1f} "
                             f"{max(vals):6d}")
            delta = (mb - ma) / ma if ma else float("nan")
            lines.append(f"  mean wait with CiGri / without: {mb / ma if ma else float('nan'):.3f} "
                         f"({100 * delta:+.1f} %; target within 5 %)")
            d = displaced(b)
            kill_jobs = [i for i in common if i in d]
            if kill_jobs:
                ka = statistics.mean(wa[i] for i in kill_jobs)
                kb = statistics.mean(wb[i] for i in kill_jobs)
                other = [i for i in common if i not in d]
                lines.append(f"  {len(kill_jobs)} normal jobs had CiGri tasks killed for them "
                             f"({sum(d.values())} tasks): mean wait {ka:.1f} s without CiGri, {kb:.1f} s with")
                if other:
                    lines.append(f"  the {len(other)} others: {statistics.mean(wa[i] for i in other):.1f} s "
                                 f"without, {statistics.mean(wb[i] for i in other):.1f} s with")
        lost = [i for i in sorted(set(wa) ^ set(wb))]
        if lost:
            lines.append(f"  left out (did not start in one of the phases): {lost}")
        lines.append("")
        lines.append("Phase A (without CiGri), for reference:")
        for c, rec in sorted(a.records.items()):
            f = figures(rec, a.t0, a.t1)
            lines.append(f"  {c}: available {f.available} core-s, normal jobs {f.normal} "
                         f"({_pct(f.normal, f.available)}), idle {f.idle}")
    lines.append("")
    lines.append("CPU of the testbed machine during each window (CPU-seconds; the batch system, CiGri and the")
    lines.append("tasks' launches share its cores, and so does whatever else runs on it):")
    cols = ("machine_busy", *CPU_KINDS, "unattributed")
    lines.append(f"  {'phase':6} {'cores':>5} " + " ".join(f"{c:>12}" for c in cols))
    for p in (a, b):
        if p is None or not p.cpu:
            continue
        ncores = p.cpu["machine_total"] / p.cpu["wall"] if p.cpu.get("wall") else 0
        lines.append(f"  {p.name:6} {ncores:5.1f} " + " ".join(f"{p.cpu.get(c, 0.0):12.0f}" for c in cols))
    png = out / "harvest.png"
    try:
        draw(b, a, png, tot)
        lines.append("")
        lines.append(f"Picture: {png}")
    except ImportError:
        lines.append("")
        lines.append("(no picture: matplotlib is not installed; pip install -c constraints.txt -e '.[bench]')")
    text = "\n".join(lines)
    (out / "table.txt").write_text(text + "\n")
    return text


def draw(b: Phase, a: Phase | None, png: Path, tot: Figures) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(b.records)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.4 * len(names) + 1.2), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [b.records[c].cores ** 0.5 for c in names]})
    colors = {"normal jobs": "#3b6fb6", "CiGri, completed": "#4caf50", "CiGri, killed": "#e53935",
              "CiGri, other": "#9e9e9e", "idle": "#f2f2f2"}
    for ax, c in zip(axes[:, 0], names, strict=True):
        s = series(b.records[c], b.t0, b.t1)
        x = [i / 60 for i in range(b.t1 - b.t0)]
        ax.stackplot(x, s.normal, s.useful, s.killed, s.other, s.idle, colors=list(colors.values()),
                     labels=list(colors), linewidth=0, step="post")
        if a is not None and c in a.records:
            sa = series(a.records[c], a.t0, a.t1)
            ax.step([i / 60 for i in range(a.t1 - a.t0)], sa.normal, where="post", color="black", lw=0.8,
                    ls="--", label="normal jobs, run without CiGri")
        f = figures(b.records[c], b.t0, b.t1)
        ax.set_ylim(0, b.records[c].cores)
        ax.set_ylabel(f"{c}\ncores")
        ax.set_title(f"{c}: {b.records[c].cores} cores, harvest ratio {f.harvest:.3f}, kill waste {f.killed} core-s",
                     fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("minutes since the start of the normal workload")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"CiGri harvest: {tot.harvest:.3f} of the core-seconds the normal jobs left idle did useful "
                 "CiGri work", y=0.99, fontsize=11)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(png, dpi=90)
    plt.close(fig)


# ============================================================================ main
def _phase_json(p: Phase) -> dict[str, Any]:
    return {"name": p.name, "t0": p.t0, "t1": p.t1, "first_ids": p.first_ids, "fill_seconds": p.fill_seconds,
            "cpu": p.cpu,
            "normal_ids": {str(k): v for k, v in p.normal_ids.items()},
            "records": {c: {"cores": r.cores, "avail": r.avail, "jobs": [asdict(j) for j in r.jobs]}
                        for c, r in p.records.items()}}


def _phase_from_json(d: dict[str, Any]) -> Phase:
    p = Phase(d["name"], d["t0"], d["t1"], d["first_ids"], {int(k): tuple(v) for k, v in d["normal_ids"].items()},
              d.get("fill_seconds"), cpu=d.get("cpu") or {})
    p.records = {c: ClusterRecords(r["cores"], r["avail"], [_jobrec(j) for j in r["jobs"]])
                 for c, r in d["records"].items()}
    return p


def _range(v: str) -> tuple[float, float]:
    lo, _, hi = v.partition(":")
    a, b = float(lo), float(hi or lo)
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError("expected MIN:MAX seconds, 0 < MIN <= MAX")
    return a, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("testbed", choices=["oar", "slurm", "report"], help="where to run (report: redo the tables)")
    ap.add_argument("dir", nargs="?", help="report: the --out directory of a run")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the normal workload (default 10)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the workload and task generators")
    ap.add_argument("--load", type=float, default=0.6, help="share of the cores the normal jobs ask for (0.6)")
    ap.add_argument("--swf", type=Path, help="replay this SWF file instead of the generated workload")
    ap.add_argument("--task-seconds", type=_range, default=(10.0, 180.0), metavar="MIN:MAX",
                    help="CiGri tasks last MIN..MAX s, log-uniform (default 10:180)")
    ap.add_argument("--no-baseline", action="store_true", help="skip phase A (no disturbance figure)")
    ap.add_argument("--out", type=Path, help="where records, SWF, table and PNG go (default /tmp/cigri-harvest-*)")
    args = ap.parse_args()

    if args.testbed == "report":
        if not args.dir:
            ap.error("report needs the directory of a run")
        d = Path(args.dir)
        print(report(json.loads((d / "records.json").read_text()), d))
        return 0
    if args.testbed == "slurm":
        import importlib.util

        if importlib.util.find_spec("cigri.clusters.slurm") is None:
            sys.exit("the slurm batch type is not in this CiGri yet: bench/harvest.py slurm needs it")
    bootstrap(args.testbed)
    bed: Bed = OarBed() if args.testbed == "oar" else SlurmBed()
    out = args.out or Path(tempfile.mkdtemp(prefix="cigri-harvest-", dir="/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    duration = args.minutes * 60
    if args.swf:
        jobs = read_swf(args.swf, bed.clusters, duration)
        source = f"SWF {args.swf}"
    else:
        jobs = generate(bed.clusters, duration, args.seed, args.load)
        source = f"generated, seed {args.seed}, load {args.load}"
    write_swf(jobs, out / "workload.swf", bed.clusters, note=source)
    say(f"{len(jobs)} normal jobs ({source}); records and figures in {out}")
    data: dict[str, Any] = {"testbed": bed.kind, "workload_jobs": len(jobs), "workload_source": source,
                            "task_seconds": list(args.task_seconds), "command": " ".join(sys.argv), "phases": []}
    with testbed_lock(bed.lock):
        for c in bed.clusters:
            stray = bed.active(c)
            if stray:
                say(f"{c}: {len(stray)} active jobs of someone else; waiting up to 2 min for them to end")
        deadline = time.time() + 120
        while any(bed.active(c) for c in bed.clusters):
            if time.time() > deadline:
                sys.exit("the testbed still runs other jobs: not measuring on a busy testbed")
            time.sleep(3)
        t_start = time.time()
        phases = [] if args.no_baseline else [False]
        for with_cigri in [*phases, True]:
            ph = run_phase(bed, jobs, args, out, with_cigri)
            data["phases"].append(_phase_json(ph))
            (out / "records.json").write_text(json.dumps(data))
        say(f"measured in {(time.time() - t_start) / 60:.1f} min")
    print(report(data, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
