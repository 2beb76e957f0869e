"""A campaign's tasks: parameters and bag_of_tasks rows, ingested in bulk (streamed in
bounded chunks), and listed with their attempts.

PostgreSQL: each chunk's parameter ids are drawn from the sequence in one statement,
the chunk is sent with COPY, and its bag_of_tasks rows are generated server-side
from the id array. With a second connection (`bag_conn`), bag rows are written in
parallel by a thread while parameters keep streaming (two tables = two CPU-bound
backends); the caller commits the bag connection first, then the main one (see
cigri.campaigns.submit_campaign). SQLite: executemany per chunk + one INSERT..SELECT.

Memory is bounded by the chunk size, whatever the number of lines."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.clusters import all_cluster_names
from cigri.db.engine import is_sqlite
from cigri.db.schema import bag_of_tasks, jobs, jobs_to_launch, parameters
from cigri.errors import NotFound, ParseError

CHUNK = 50_000
CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_PRIORITY = 10


class DuplicateName(Exception):
    """A parameter name is already used in the campaign (UNIQUE(campaign_id, name))."""

    def __init__(self, name: str | None) -> None:
        super().__init__(name)
        self.name = name


def _chunks(pairs: Iterable[tuple[str, str]], size: int, max_bytes: int = CHUNK_BYTES
            ) -> Iterator[list[tuple[str, str]]]:
    """Lists of at most `size` pairs and about `max_bytes` characters (long lines)."""
    buf: list[tuple[str, str]] = []
    nbytes = 0
    for p in pairs:
        buf.append(p)
        nbytes += len(p[1])
        if len(buf) >= size or nbytes >= max_bytes:
            yield buf
            buf = []
            nbytes = 0
    if buf:
        yield buf


def _esc(s: str) -> str:
    if "\\" in s or "\t" in s or "\r" in s or "\n" in s:
        return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")
    return s


_DUP_KEY = re.compile(r"Key \(campaign_id, name\)=\(\d+, (.*)\) already exists", re.S)


def _duplicate_from(exc: BaseException) -> DuplicateName | None:
    """DuplicateName if `exc` (DBAPI or SQLAlchemy) is the UNIQUE(campaign_id, name) violation."""
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    if diag is not None:
        detail = getattr(diag, "message_detail", None) or ""
        m = _DUP_KEY.search(detail)
        if getattr(diag, "constraint_name", None) == "parameters_campaign_id_name_key" or m:
            return DuplicateName(m.group(1) if m else None)
        return None
    if "UNIQUE constraint failed: parameters." in str(orig):
        return DuplicateName(None)
    return None


def insert_parameters(conn: Connection, campaign_id: int, pairs: Iterable[tuple[str, str]],
                      priority: int = DEFAULT_PRIORITY, bag_conn: Connection | None = None,
                      chunk: int = CHUNK) -> int:
    """Insert (name, line) pairs as parameters + one bag_of_tasks row each; returns the count.

    Raises DuplicateName on a name clash (the caller rolls back and names the lines)."""
    if is_sqlite(conn):
        return _insert_sqlite(conn, campaign_id, pairs, priority, chunk)
    return _insert_pg(conn, campaign_id, pairs, priority, bag_conn, chunk)


def _insert_sqlite(conn: Connection, cid: int, pairs: Iterable[tuple[str, str]], priority: int,
                   chunk: int) -> int:
    before = conn.execute(sa.select(sa.func.coalesce(sa.func.max(parameters.c.id), 0))).scalar_one()
    raw = conn.connection.driver_connection
    n = 0
    try:
        for rows in _chunks(pairs, chunk):
            raw.executemany("INSERT INTO parameters (campaign_id, name, param) VALUES (?, ?, ?)",  # type: ignore[union-attr]
                            [(cid, name, line) for name, line in rows])
            n += len(rows)
    except Exception as e:
        dup = _duplicate_from(e)
        if dup is not None:
            raise dup from None
        raise
    conn.execute(sa.insert(bag_of_tasks).from_select(
        ["campaign_id", "param_id", "priority"],
        sa.select(parameters.c.campaign_id, parameters.c.id, sa.literal(priority))
        .where(parameters.c.campaign_id == cid, parameters.c.id > before).order_by(parameters.c.id)))
    return n


_BAG_SQL = ("INSERT INTO bag_of_tasks (campaign_id, param_id, priority) "
            "SELECT %s, p, %s FROM generate_series(%s::bigint, %s::bigint) AS p")
#: one lock key for every reservation of parameter ids (all PostgreSQL inserts go through here).
_RESERVE_LOCK = 0x43694772  # "CiGr"


def reserve_ids(cur: Any, n: int) -> int:
    """First of `n` consecutive parameters ids, taken from the sequence in one step (a
    per-row nextval costs ~0.7 s per million rows). The advisory lock makes
    nextval+setval atomic with respect to other reservations."""
    cur.execute("SELECT pg_advisory_lock(%s)", (_RESERVE_LOCK,))
    try:
        first = cur.execute("SELECT nextval('parameters_id_seq')").fetchone()[0]
        if n > 1:
            cur.execute("SELECT setval('parameters_id_seq', %s::bigint)", (first + n - 1,))
    finally:
        cur.execute("SELECT pg_advisory_unlock(%s)", (_RESERVE_LOCK,))
    return int(first)


def _insert_pg(conn: Connection, cid: int, pairs: Iterable[tuple[str, str]], priority: int,
               bag_conn: Connection | None, chunk: int) -> int:
    raw: Any = conn.connection.driver_connection
    worker: _BagWriter | None = _BagWriter(bag_conn.connection.driver_connection, cid, priority) \
        if bag_conn is not None else None
    n = 0
    scid = str(cid)
    try:
        with raw.cursor() as cur:
            for rows in _chunks(pairs, chunk):
                first = reserve_ids(cur, len(rows))
                data = "".join([f"{i}\t{scid}\t{_esc(name)}\t{_esc(line)}\n"
                                for i, (name, line) in enumerate(rows, first)])
                with cur.copy("COPY parameters (id, campaign_id, name, param) FROM STDIN") as cp:
                    cp.write(data)
                del data
                ids = (first, first + len(rows) - 1)
                if worker is not None:
                    worker.put(ids)
                else:
                    cur.execute(_BAG_SQL, (cid, priority, *ids))
                n += len(rows)
    except BaseException as e:
        if worker is not None:
            worker.abort()
        dup = _duplicate_from(e)
        if dup is not None:
            raise dup from None
        raise
    if worker is not None:
        worker.finish()
    return n


class _BagWriter:
    """Writes bag_of_tasks rows on a second connection while parameters stream on the first."""

    def __init__(self, raw: Any, cid: int, priority: int) -> None:
        self.raw, self.cid, self.priority = raw, cid, priority
        self.q: queue.Queue[tuple[int, int] | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bag-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.raw.cursor() as cur:
            while True:
                ids = self.q.get()
                if ids is None:
                    return
                if self.error is None:
                    try:
                        cur.execute(_BAG_SQL, (self.cid, self.priority, *ids))
                    except BaseException as e:  # noqa: BLE001 - reported by finish()
                        self.error = e

    def put(self, ids: tuple[int, int]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(ids)

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self.q.put(None)
        self.thread.join()

    def finish(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def lines_with_name(lines: Iterable[str], name: str | None, limit: int = 2) -> list[int]:
    """Line numbers (1-based) whose first token is `name` (used to explain a duplicate)."""
    found: list[int] = []
    if name is None:
        return found
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if (line.split(None, 1)[0] if line else "") == name:
            found.append(n)
            if len(found) >= limit:
                break
    return found


def first_duplicate(lines: Iterable[str]) -> tuple[str, int, int] | None:
    """(name, first line, second line) of the first repeated name (O(n) memory: error path only)."""
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        name = line.split(None, 1)[0] if line else ""
        if name in seen:
            return name, seen[name], n
        seen[name] = n
    return None


def existing_name(conn: Connection, campaign_id: int, name: str) -> bool:
    q = sa.select(parameters.c.id).where(parameters.c.campaign_id == campaign_id, parameters.c.name == name)
    return conn.execute(q.limit(1)).first() is not None


def duplicate_message(name: str, lines: list[int], source: str) -> ParseError:
    shown = "''" if name == "" else repr(name)
    if len(lines) >= 2:
        return ParseError(f"duplicate parameter name {shown} at lines {lines[0]} and {lines[1]} of {source}")
    if lines:
        return ParseError(f"duplicate parameter name {shown} at line {lines[0]} of {source}: "
                          "already used in the campaign")
    return ParseError(f"duplicate parameter name {shown} in {source}")


def delete_campaign_parameters(conn: Connection, campaign_id: int) -> int:
    res = conn.execute(parameters.delete().where(parameters.c.campaign_id == campaign_id,
                                                 parameters.c.id != 0))
    return int(res.rowcount or 0)


def count_parameters(conn: Connection, campaign_id: int) -> int:
    q = sa.select(sa.func.count()).select_from(parameters).where(parameters.c.campaign_id == campaign_id)
    return int(conn.execute(q).scalar_one())


def list_parameters(conn: Connection, campaign_id: int, limit: int | None = None, offset: int = 0
                    ) -> list[dict[str, Any]]:
    """A page of a campaign's parameters (id, name, param) in submission order. The stored
    JDL no longer embeds them (GET /campaigns/:id/jdl rebuilds `params` from here)."""
    q = (sa.select(parameters.c.id, parameters.c.name, parameters.c.param)
         .where(parameters.c.campaign_id == campaign_id, parameters.c.id != 0)
         .order_by(parameters.c.id).offset(offset))
    if limit is not None:
        q = q.limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def ensure_null_parameter(conn: Connection) -> None:
    """The null parameter (id 0) of prologue/epilogue jobs (CiGri3 created it at start)."""
    if conn.execute(sa.select(parameters.c.id).where(parameters.c.id == 0)).first() is None:
        conn.execute(parameters.insert().values(id=0, campaign_id=0, name="null",
                                                param="null parameter for special jobs, dont delete!"))


# ------------------------------------------------------------------ a campaign's tasks and their attempts


def campaign_tasks(conn: Connection, campaign_id: int, limit: int, offset: int,
                   state: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of the task listing.

    Without `state`, pages are over parameters (each attempt of a task is one item);
    with `state` (a job state, `queued` or `pending`), over the matching rows."""
    names = all_cluster_names(conn)
    if state is None:
        q = (sa.select(parameters.c.id, parameters.c.name, parameters.c.param)
             .where(parameters.c.campaign_id == campaign_id).order_by(parameters.c.id).limit(limit).offset(offset))
        params = list(conn.execute(q))
        return _expand_tasks(conn, params, names), -1
    if state == "queued":
        base = (sa.select(parameters.c.id, parameters.c.name, parameters.c.param)
                .select_from(parameters.join(bag_of_tasks, bag_of_tasks.c.param_id == parameters.c.id)
                             .join(jobs_to_launch, jobs_to_launch.c.task_id == bag_of_tasks.c.id))
                .where(parameters.c.campaign_id == campaign_id).distinct())
    elif state == "pending":
        queued = (sa.select(bag_of_tasks.c.param_id)
                  .select_from(bag_of_tasks.join(jobs_to_launch, jobs_to_launch.c.task_id == bag_of_tasks.c.id))
                  .where(bag_of_tasks.c.campaign_id == campaign_id))
        has_job = sa.select(jobs.c.id).where(jobs.c.param_id == parameters.c.id).exists()
        base = (sa.select(parameters.c.id, parameters.c.name, parameters.c.param)
                .where(parameters.c.campaign_id == campaign_id, ~has_job, parameters.c.id.not_in(queued)))
    else:
        q = (sa.select(jobs.c.id, jobs.c.param_id, jobs.c.cluster_id, jobs.c.remote_id, jobs.c.state,
                       parameters.c.name, parameters.c.param)
             .select_from(jobs.join(parameters, parameters.c.id == jobs.c.param_id))
             .where(jobs.c.campaign_id == campaign_id, jobs.c.state == state, jobs.c.param_id > 0))
        total = int(conn.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar_one())
        rows = conn.execute(q.order_by(jobs.c.param_id, jobs.c.id).limit(limit).offset(offset))
        items = [{"id": int(r.param_id), "name": r.name, "parameters": r.param,
                  "cluster": names.get(r.cluster_id) if r.cluster_id is not None else None,
                  "cigri_job_id": int(r.id), "remote_id": r.remote_id, "state": r.state} for r in rows]
        return items, total
    total = int(conn.execute(sa.select(sa.func.count()).select_from(base.subquery())).scalar_one())
    params = list(conn.execute(base.order_by(parameters.c.id).limit(limit).offset(offset)))
    items = _expand_tasks(conn, params, names)
    items = [i for i in items if i["state"] == state]
    return items, total


def _expand_tasks(conn: Connection, params: Sequence[Any], names: dict[int, str]) -> list[dict[str, Any]]:
    ids = [int(p.id) for p in params]
    if not ids:
        return []
    by_param: dict[int, list[Any]] = {}
    q = (sa.select(jobs.c.id, jobs.c.param_id, jobs.c.cluster_id, jobs.c.remote_id, jobs.c.state)
         .where(jobs.c.param_id.in_(ids)).order_by(jobs.c.id))
    for r in conn.execute(q):
        by_param.setdefault(int(r.param_id), []).append(r)
    q = (sa.select(bag_of_tasks.c.param_id, jobs_to_launch.c.cluster_id)
         .select_from(bag_of_tasks.join(jobs_to_launch, jobs_to_launch.c.task_id == bag_of_tasks.c.id))
         .where(bag_of_tasks.c.param_id.in_(ids)))
    queued = {int(r[0]): int(r[1]) for r in conn.execute(q)}
    items: list[dict[str, Any]] = []
    for p in params:
        pid = int(p.id)
        base = {"id": pid, "name": p.name, "parameters": p.param}
        attempts = by_param.get(pid)
        if attempts:
            for j in attempts:
                items.append(base | {"cluster": names.get(j.cluster_id) if j.cluster_id is not None else None,
                                     "cigri_job_id": int(j.id), "remote_id": j.remote_id, "state": j.state})
        elif pid in queued:
            items.append(base | {"cluster": names.get(queued[pid]), "cigri_job_id": None, "remote_id": None,
                                 "state": "queued"})
        else:
            items.append(base | {"cluster": None, "cigri_job_id": None, "remote_id": None, "state": "pending"})
    return items


def campaign_task(conn: Connection, campaign_id: int, task_id: int) -> dict[str, Any]:
    """One task and all its executions."""
    p = conn.execute(sa.select(parameters).where(parameters.c.id == task_id,
                                                 parameters.c.campaign_id == campaign_id)).mappings().first()
    if p is None:
        raise NotFound(f"Task {task_id} not found in campaign {campaign_id}")
    names = all_cluster_names(conn)
    execs = [{"id": int(j.id), "cluster_id": j.cluster_id, "cluster_name": names.get(j.cluster_id),
              "state": j.state, "return_code": j.return_code, "remote_id": j.remote_id}
             for j in conn.execute(sa.select(jobs).where(jobs.c.param_id == task_id).order_by(jobs.c.id))]
    if execs:
        state = execs[-1]["state"]
    else:
        queued = conn.execute(
            sa.select(jobs_to_launch.c.id)
            .select_from(jobs_to_launch.join(bag_of_tasks, bag_of_tasks.c.id == jobs_to_launch.c.task_id))
            .where(bag_of_tasks.c.param_id == task_id).limit(1)).first()
        state = "queued" if queued else "waiting"
    return {"id": int(p["id"]), "name": p["name"], "parameters": p["param"], "state": state, "execution": execs}
