"""Campaign operations (spec §3.1, §4.2-4.3): submit, add tasks, cancel, pause, resume,
purge, delete, update. Each operation is one transaction (submission: see below), and
checks the state machine of cigri.states. The API and the CLI call exactly these."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine

from cigri import admission, containers
from cigri import jdl as jdlmod
from cigri.access import admins_of, may_act_on
from cigri.config import Conf, get_conf
from cigri.db import campaigns as dbc
from cigri.db import parameters as dbp
from cigri.db.clusters import cluster_ids_by_name, container_engines
from cigri.db.engine import is_sqlite
from cigri.db.events import create_event, forget_job_events_of_campaign
from cigri.db.notify import METASCHEDULER, notify
from cigri.errors import CigriError, NotFound, ParseError, StateError, Unauthorized
from cigri.states import ENDED_CAMPAIGN_STATES, UNFINISHED_JOB_STATES, check_campaign_transition

log = logging.getLogger("cigri.campaigns")

PARAM_FILE_REFUSED = ("Field 'param_file' is not accepted by the server: it never opens files named by users. "
                      "Send the file's lines as 'params' (gridsub does it for you, reading the file as you)")

#: above this many parameters, PostgreSQL writes bag_of_tasks on a second connection.
PARALLEL_THRESHOLD = dbp.CHUNK


def _admins(admins: Iterable[str] | None, conf: Conf | None = None) -> tuple[str, ...]:
    return tuple(admins) if admins is not None else admins_of(conf)


def check_rights(conn: Connection, cid: int, user: str, admins: Iterable[str] = ("root",),
                 for_update: bool = False) -> dict[str, Any]:
    """The campaign row, or NotFound / Unauthorized (owner or admin only)."""
    try:
        cid = int(cid)
    except (TypeError, ValueError):
        raise NotFound(f"Campaign {cid} not found") from None
    row = dbc.get_campaign(conn, cid, for_update=for_update)
    if row is None:
        raise NotFound(f"Campaign {cid} not found")
    if not may_act_on(user, row["grid_user"], admins):
        raise Unauthorized(f"Access denied: campaign {cid} belongs to another user")
    return row


# ------------------------------------------------------------------ submission
def _params_source(expanded: dict[str, Any]) -> dict[str, Any]:
    for k in ("params", "nb_jobs", "param_file"):
        if k in expanded:
            return {k: expanded[k]}
    return {"params": []}


def _expected_size(expanded: dict[str, Any]) -> int:
    if "params" in expanded:
        return len(expanded["params"])
    if "nb_jobs" in expanded:
        return int(expanded["nb_jobs"])
    return PARALLEL_THRESHOLD + 1  # a file: assume large


def _precheck_params(expanded: dict[str, Any]) -> None:
    """In-memory params: report duplicates before touching the database."""
    if "params" in expanded:
        dup = dbp.first_duplicate(expanded["params"])
        if dup:
            raise dbp.duplicate_message(dup[0], [dup[1], dup[2]], "'params' (elements, from 1)")


def _duplicate_error(expanded: dict[str, Any], user: str, name: str | None, source: str,
                     conn: Connection | None = None, cid: int | None = None) -> ParseError:
    if name is None:  # SQLite does not say which name: find it (error path only)
        dup = dbp.first_duplicate(jdlmod.iter_param_lines(expanded, user))
        if dup:
            return dbp.duplicate_message(dup[0], [dup[1], dup[2]], source)
        if conn is not None and cid is not None:
            for n, line in enumerate(jdlmod.iter_param_lines(expanded, user), 1):
                nm = line.split(None, 1)[0] if line else ""
                if dbp.existing_name(conn, cid, nm):
                    return dbp.duplicate_message(nm, [n], source)
        return ParseError(f"duplicate parameter name in {source}")
    return dbp.duplicate_message(name, dbp.lines_with_name(jdlmod.iter_param_lines(expanded, user), name), source)


def prepare_campaign(engine: Engine, jdl: Any, user: str, conf: Conf | None = None, read_files: bool = True
                     ) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse, expand and admit a JDL: (expanded JDL, known clusters). Writes nothing.

    `read_files=False` (the API): a `param_file` is refused, never opened. The server runs
    with an identity other than the submitter's, so it must not open paths they name;
    gridsub reads the file as the user and sends its lines as `params`."""
    conf = conf or get_conf()
    parsed = jdlmod.parse_jdl(jdl)
    if not read_files and "param_file" in parsed and "params" not in parsed and "nb_jobs" not in parsed:
        raise ParseError(PARAM_FILE_REFUSED)
    with engine.connect() as conn:
        known = cluster_ids_by_name(conn, list(parsed["clusters"]))
        offered = container_engines(conn, list(known.values()))
        rules = admission.load_rules(conn)
    expanded = jdlmod.expand_jdl(parsed, conf, user, known)
    if expanded["jobs_type"] == "desktop_computing":
        raise ParseError("Desktop_computing campaigns are not yet supported")
    _precheck_params(expanded)
    source = _params_source(expanded)
    if rules:
        for_rules = {k: v for k, v in expanded.items() if k not in ("params", "nb_jobs", "param_file")}
        for_rules["params"] = []
        admitted = admission.run_rules(rules, for_rules, user, source)
        try:
            checked = jdlmod.parse_jdl(admitted | {"params": []})
        except ParseError as e:
            raise ParseError(f"The admission rules produced an invalid JDL: {e}") from None
        checked.pop("params", None)
        checked.update(source)
        expanded = checked
        known = {n: i for n, i in known.items() if n in expanded["clusters"]}
        if not known:
            raise ParseError("No clusters usable for the campaign")
    for cname, cluster_id in known.items():
        containers.check_engine_offered(cname, expanded["clusters"][cname].get("container"), offered.get(cluster_id))
    return expanded, known


def submit_campaign(engine: Engine, jdl: Any, user: str, conf: Conf | None = None, read_files: bool = True) -> int:
    """Create a campaign: campaigns, campaign_properties, parameters and bag_of_tasks rows.

    Everything is one transaction, except that on PostgreSQL large campaigns write
    bag_of_tasks on a second connection in parallel. That connection commits first: its
    rows are unreachable until the campaign row commits (nothing reads bag rows of an
    unknown campaign); if the main commit fails they are deleted again."""
    conf = conf or get_conf()
    expanded, known = prepare_campaign(engine, jdl, user, conf, read_files)
    source_label = jdlmod.param_source(expanded)
    parallel = not is_sqlite(engine) and _expected_size(expanded) > PARALLEL_THRESHOLD
    main = engine.connect()
    bag = engine.connect() if parallel else None
    cid: int | None = None
    try:
        tx = main.begin()
        btx = bag.begin() if bag is not None else None
        try:
            stored = jdlmod.stored_jdl(expanded, 0)
            cid = dbc.insert_campaign(main, user, expanded["jobs_type"], expanded["name"], stored)
            rows = [(known[c], k, v) for c in expanded["clusters"] if c in known
                    for k, v in jdlmod.cluster_properties(expanded, c).items()]
            for c in expanded["clusters"]:
                if c not in known:
                    log.warning("Campaign %s: cluster %s unknown, skipped", cid, c)
            dbc.insert_properties(main, cid, rows)
            try:
                n = dbp.insert_parameters(main, cid, jdlmod.iter_named_params(expanded, user), bag_conn=bag)
            except dbp.DuplicateName as d:
                raise _duplicate_error(expanded, user, d.name, source_label) from None
            dbc.update_campaign(main, cid, nb_jobs=n, jdl=jdlmod.stored_jdl(expanded, n))
            notify(main, METASCHEDULER)  # schedule it now, not at the next cycle
        except BaseException:
            if btx is not None:
                btx.rollback()
            tx.rollback()
            raise
        if btx is not None:
            btx.commit()
        try:
            tx.commit()
        except BaseException:
            if bag is not None:
                with engine.begin() as c:
                    dbc.delete_queue_and_bag(c, cid)
            raise
    finally:
        if bag is not None:
            bag.close()
        main.close()
    log.info("Campaign %s submitted by %s: %d tasks", cid, user, n)
    return cid


def add_tasks(engine: Engine, campaign_id: int, lines: Iterable[str], user: str,
              admins: Iterable[str] | None = None) -> int:
    """Append tasks to a campaign (spec §4.3); a terminated campaign goes back to in_treatment.
    Returns the number of tasks added."""
    admins = _admins(admins)
    if not isinstance(lines, Sequence) or isinstance(lines, (str, bytes)):
        if isinstance(lines, (str, bytes)):
            raise ParseError("Tasks must be an array of parameter lines")
        lines = list(lines)
    expanded = {"params": list(lines)}
    _precheck_params(expanded)
    with engine.begin() as conn:
        row = check_rights(conn, campaign_id, user, admins, for_update=True)
        if row["state"] == "cancelled":
            raise StateError(f"Campaign {campaign_id} is cancelled: no tasks can be added")
        try:
            with conn.begin_nested():  # savepoint: lets the error path look at the rows before the insert
                n = dbp.insert_parameters(conn, int(campaign_id), jdlmod.iter_named_params(expanded, user))
        except dbp.DuplicateName as d:
            raise _duplicate_error(expanded, user, d.name, "'params' (lines)", conn, int(campaign_id)) from None
        values: dict[str, Any] = {"nb_jobs": (row["nb_jobs"] or 0) + n}
        stored = _load_jdl(row)
        if stored is not None:
            stored["params_count"] = values["nb_jobs"]
            values["jdl"] = stored
        if row["state"] == "terminated" and n:
            check_campaign_transition("terminated", "in_treatment")
            values["state"] = "in_treatment"
        dbc.update_campaign(conn, int(campaign_id), **values)
        notify(conn, METASCHEDULER)
    return n


def _load_jdl(row: dict[str, Any]) -> dict[str, Any] | None:
    import json
    try:
        v = json.loads(row["jdl"] or "null")
    except ValueError:
        return None
    if isinstance(v, dict) and isinstance(v.get("params"), list) and v["params"]:
        return None  # a CiGri3-era JDL with inline params: leave it untouched
    return v if isinstance(v, dict) else None


# ------------------------------------------------------------------ state changes
def cancel_campaign(engine: Engine, cid: int, user: str, admins: Iterable[str] | None = None) -> int:
    """1 if cancelled now, 0 if it already was (spec AC-17). Drops its pending work and opens a
    USER_FRAG event so nikita kills its running jobs."""
    admins = _admins(admins)
    with engine.begin() as conn:
        row = check_rights(conn, cid, user, admins, for_update=True)
        if row["state"] == "cancelled":
            return 0
        check_campaign_transition(row["state"], "cancelled")
        dbc.delete_queue_and_bag(conn, int(cid))
        dbc.update_campaign(conn, int(cid), state="cancelled")
        create_event(conn, "campaign", "USER_FRAG", campaign_id=int(cid),
                     message=f"Campaign {cid} cancelled by {user}")
    return 1


def pause_campaign(engine: Engine, cid: int, user: str, admins: Iterable[str] | None = None) -> None:
    _set_state(engine, cid, user, _admins(admins), "paused", "Can't hold (pause) a {old} campaign")


def resume_campaign(engine: Engine, cid: int, user: str, admins: Iterable[str] | None = None) -> None:
    _set_state(engine, cid, user, _admins(admins), "in_treatment", "Can't resume a {old} campaign")


def _set_state(engine: Engine, cid: int, user: str, admins: tuple[str, ...], new: str,
               refusal: str) -> dict[str, Any]:
    with engine.begin() as conn:
        row = check_rights(conn, cid, user, admins, for_update=True)
        _state_change(conn, row, new, user, refusal)
        return dbc.get_campaign(conn, int(cid)) or row


def _state_change(conn: Connection, row: dict[str, Any], new: str, user: str,
                  refusal: str = "Can't change a {old} campaign to {new}") -> None:
    """Only user-driven changes: in_treatment <-> paused (CiGri3 let a PUT resume a cancelled one)."""
    old = row["state"]
    allowed = {("in_treatment", "paused"), ("paused", "in_treatment")}
    if (old, new) not in allowed:
        raise StateError(refusal.format(old=old, new=new))
    check_campaign_transition(old, new)
    dbc.update_campaign(conn, int(row["id"]), state=new)
    if new == "in_treatment":
        notify(conn, METASCHEDULER)
    code = "PAUSED" if new == "paused" else "RESUMED"
    create_event(conn, "campaign", code, state="closed", campaign_id=int(row["id"]),
                 message=f"Campaign {row['id']} {'paused' if new == 'paused' else 'resumed'} by {user}")


def update_campaign(engine: Engine, cid: int, user: str, name: str | None = None, state: str | None = None,
                    admins: Iterable[str] | None = None) -> dict[str, Any]:
    """PUT /campaigns/:id: rename and/or pause/resume. Returns the updated row."""
    admins = _admins(admins)
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 255):
        raise ParseError("Field 'name' must be a non-empty string of at most 255 characters")
    if state is not None and state not in ("paused", "in_treatment"):
        raise ParseError(f"Field 'state' must be paused or in_treatment, got {state!r}")
    with engine.begin() as conn:
        row = check_rights(conn, cid, user, admins, for_update=True)
        if state is not None and state != row["state"]:
            _state_change(conn, row, state, user)
        if name is not None:
            dbc.update_campaign(conn, int(cid), name=name)
        return dbc.get_campaign(conn, int(cid)) or row


def purge_campaign(engine: Engine, cid: int, user: str, admins: Iterable[str] | None = None) -> int:
    """Free the space of a finished campaign (fixes §15.2 #7): a terminated or cancelled campaign
    without active jobs loses its parameters, jobs, queue, taps, affinities and job events; the
    campaign row, its properties and campaign events remain. Returns the number of tasks purged."""
    admins = _admins(admins)
    with engine.begin() as conn:
        row = check_rights(conn, cid, user, admins, for_update=True)
        if row["state"] not in ENDED_CAMPAIGN_STATES:
            raise StateError(f"Can't purge a {row['state']} campaign: only terminated or cancelled campaigns "
                             "can be purged (cancel it first)")
        active = dbc.count_active_jobs(conn, int(cid), UNFINISHED_JOB_STATES)
        if active:
            raise StateError(f"Campaign {cid} still has {active} active jobs: wait for them to be killed")
        n = dbp.count_parameters(conn, int(cid))
        dbc.delete_campaign_rows(conn, int(cid), keep_campaign=True)
        forget_job_events_of_campaign(conn, int(cid))
        create_event(conn, "campaign", "PURGE", state="closed", campaign_id=int(cid),
                     message=f"Campaign {cid} purged by {user} ({n} tasks)")
    return n


def delete_campaign(engine: Engine, cid: int, user: str, admins: Iterable[str] | None = None) -> bool:
    """Hard delete: every row of the campaign, in one transaction (spec §3.1)."""
    admins = _admins(admins)
    with engine.begin() as conn:
        check_rights(conn, cid, user, admins, for_update=True)
        dbc.delete_campaign_rows(conn, int(cid))
    return True


__all__ = ["CigriError", "add_tasks", "cancel_campaign", "check_rights", "delete_campaign", "pause_campaign",
           "prepare_campaign", "purge_campaign", "resume_campaign", "submit_campaign", "update_campaign"]
