"""User and administrator operations on events and jobs: fix (close) events, optionally
resubmitting their jobs, ask for a job's kill, raise an event by hand. Each is one
transaction with the owner-or-admin rule checked inside it; the API and the commands
call these."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Engine

from cigri.access import is_admin, may_act_on
from cigri.campaigns import check_rights
from cigri.config import Conf
from cigri.db import events as dbevents
from cigri.db import jobs as dbjobs
from cigri.db.events import close_event, create_event, get_event
from cigri.db.jobs import resubmit_job
from cigri.errors import NotFound, Unauthorized


def fix_campaign_events(engine: Engine, cid: int, user: str, admins: Iterable[str], resubmit: bool) -> list[int]:
    """Close the campaign's open events (not BLACKLIST: the updator lifts it) and, with
    `resubmit`, put their jobs' tasks back in the bag. Returns the jobs concerned."""
    with engine.begin() as conn:
        check_rights(conn, cid, user, admins)
        job_ids = dbevents.close_campaign_events(conn, cid)
        if resubmit:
            for j in job_ids:
                resubmit_job(conn, j)
    return job_ids


def fix_event(engine: Engine, eid: int, user: str, admins: Iterable[str], resubmit: bool) -> dict[str, Any]:
    """Close one event; campaign events by their owner or an admin, global ones by an admin."""
    with engine.begin() as conn:
        ev = get_event(conn, eid)
        if ev is None:
            raise NotFound(f"Event {eid} not found")
        if ev["campaign_id"] is None:
            if not is_admin(user, admins):
                raise Unauthorized("Access denied: only an administrator can fix a global event")
        else:
            check_rights(conn, int(ev["campaign_id"]), user, admins)
        close_event(conn, eid)
        if resubmit and ev["job_id"] is not None:
            resubmit_job(conn, int(ev["job_id"]))
    return ev


def cancel_job(engine: Engine, job_id: int, user: str, admins: Iterable[str]) -> None:
    """Ask nikita to kill one job (a USER_FRAG event on it)."""
    with engine.begin() as conn:
        job = dbjobs.job_representation(conn, job_id)
        if job is None:
            raise NotFound(f"Job {job_id} not found")
        if not may_act_on(user, job["grid_user"], admins):
            raise Unauthorized(f"Access denied: job {job_id} belongs to another user")
        create_event(conn, "job", "USER_FRAG", job_id=job_id, campaign_id=job["campaign_id"],
                     cluster_id=job["cluster_id"], message=f"User request to cancel the job {job_id}")


def raise_event(engine: Engine, conf: Conf, class_: str, code: str, state: str = "open", *,
                job_id: int | None = None, cluster_id: int | None = None, campaign_id: int | None = None,
                parent: int | None = None, message: str | None = None) -> int:
    """An administrator's event (e.g. CLUSTER_MANUALLY_DISABLED). On a job, the job goes to
    the `event` state; an open cluster event is judged by colombo in the same transaction,
    as in CiGri3 (a blacklist takes effect at once)."""
    with engine.begin() as conn:
        if job_id is not None:
            campaign_id = dbjobs.set_job_event_state(conn, job_id)
        eid = create_event(conn, class_, code, state=state, job_id=job_id, cluster_id=cluster_id,
                           campaign_id=campaign_id, parent=parent, message=message)
        if class_ == "cluster" and state == "open":
            from cigri.engine.colombo import check_events

            check_events(conn, [eid], conf)
    return eid
