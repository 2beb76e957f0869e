"""Local-mode fixtures: a local adapter on a private state directory, whose executor and
tasks are stopped at the end of the test."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cigri.clusters.base import ClusterInfo, Outcome, RemoteJob
from cigri.clusters.local import LocalAdapter
from cigri.config import Conf

DEADLINE = 120.0  # generous: the test machine has 2 shared cores
ME = getpass.getuser()  # a local cluster runs the tasks of its own user only


def wait_for(cond: Callable[[], object], timeout: float = DEADLINE, what: str = "condition") -> object:
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stop_local(state: Path) -> None:
    """Stop the executor of a state directory and kill what still runs there."""
    from cigri.localexec.store import Store

    store = Store(state)
    store.stop_executor()
    for rec in store.running_records():
        pid = rec.get("shepherd")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)


@pytest.fixture
def make_adapter(tmp_path: Path) -> Iterator[Callable[..., LocalAdapter]]:
    states: list[Path] = []

    def make(cores: int = 2, name: str = "state") -> LocalAdapter:
        state = tmp_path / name
        states.append(state)
        conf = Conf(values={"LOCAL_CORES": str(cores)})
        info = ClusterInfo(id=1, name="local", api_url=f"local://{state}", batch="local")
        return LocalAdapter(info, conf=conf)

    yield make
    for s in states:
        stop_local(s)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def wait_ended(adapter: LocalAdapter, ids: Sequence[int], timeout: float = DEADLINE) -> dict[int, RemoteJob]:
    def ended() -> dict[int, RemoteJob] | None:
        jobs = adapter.get_jobs(ids)
        if len(jobs) == len(ids) and all(j.outcome.ended for j in jobs.values()):
            return jobs
        return None

    return wait_for(ended, timeout, f"jobs {list(ids)[:5]}... to end")  # type: ignore[return-value]


def wait_state(adapter: LocalAdapter, job_id: int, state: Outcome, timeout: float = DEADLINE) -> RemoteJob:
    """The job once in `state` (running: once its shepherd's pid, written just after, is there)."""
    def seen() -> RemoteJob | None:
        j = adapter.get_job(job_id)
        ok = j.outcome is state and (state is not Outcome.RUNNING or j.raw.get("shepherd"))
        return j if ok else None

    return wait_for(seen, timeout, f"job {job_id} {state}")  # type: ignore[return-value]


class LocalMode:
    """`cigri local run` in a private data directory (XDG_DATA_HOME), as a user runs it."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "xdg" / "cigri"
        self.work = root / "work"
        self.work.mkdir(exist_ok=True)
        self.env = dict(os.environ, XDG_DATA_HOME=str(root / "xdg"), PYTHONUNBUFFERED="1")
        self.env.pop("CIGRICONFFILE", None)
        self.procs: list[subprocess.Popen[str]] = []
        self._engine: Any = None

    def jdl(self, name: str, **fields: Any) -> Path:
        body = {"name": name, "exec_directory": str(self.work), "walltime": "00:10:00",
                "clusters": {"local": fields.pop("cluster", {})}} | fields
        p = self.root / f"{name}.jdl"
        p.write_text(json.dumps(body))
        return p

    def script(self, name: str, body: str) -> str:
        p = self.root / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)
        return str(p)

    def start(self, *args: str) -> subprocess.Popen[str]:
        out = open(self.root / f"run{len(self.procs)}.out", "w")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "cigri.cli.local", "local", "run", *args], env=self.env,
                             stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        p.out_path = out.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Another `cigri local` command (summary, status...), as the user types it."""
        return subprocess.run([sys.executable, "-m", "cigri.cli.local", "local", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def grid(self, command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A grid* command, with no configuration: it finds local mode by itself."""
        return subprocess.run([str(Path(sys.executable).parent / command), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def output(self, p: subprocess.Popen[str]) -> str:
        return Path(p.out_path).read_text()  # type: ignore[attr-defined]

    def run(self, *args: str, timeout: float = 300) -> tuple[int, str]:
        p = self.start(*args)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGINT)
            p.wait(60)
            raise AssertionError(f"`cigri local run {' '.join(args)}` did not end:\n{self.output(p)}") from None
        return rc, self.output(p)

    def interrupt(self, p: subprocess.Popen[str]) -> int:
        """Ctrl-C: SIGINT to the whole foreground process group (not to the tasks)."""
        os.killpg(p.pid, signal.SIGINT)
        return p.wait(120)

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from cigri.db.engine import make_engine

            self._engine = make_engine(Conf(values={"DATABASE_TYPE": "SQLite",
                                                    "DATABASE_PATH": str(self.data / "cigri.sqlite")}))
        return self._engine

    def query(self, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), params))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(60)
        stop_local(self.data / "local")
        self.cli("stop")  # (also the API the grid* commands started on demand)
        if self._engine is not None:
            self._engine.dispose()


@pytest.fixture
def local_mode(tmp_path: Path) -> Iterator[LocalMode]:
    lm = LocalMode(tmp_path)
    yield lm
    lm.close()
