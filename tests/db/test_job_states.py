"""Job states change only through cigri.db.jobs.change_state(s): guarded by the state read,
and never along a transition the state machine forbids (on PostgreSQL and SQLite)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.db import schema
from cigri.db.jobs import change_state, change_states
from cigri.errors import StateError
from cigri.states import JOB_TRANSITIONS, UNFINISHED_JOB_STATES, JobState, sources_of


def _job(engine: Engine, state: str) -> int:
    with engine.begin() as c:
        return int(c.execute(schema.jobs.insert().values(campaign_id=1, param_id=1, state=state)
                             .returning(schema.jobs.c.id)).scalar_one())


def _state(engine: Engine, jid: int) -> str:
    with engine.connect() as c:
        return str(c.execute(sa.select(schema.jobs.c.state).where(schema.jobs.c.id == jid)).scalar_one())


def test_a_forbidden_transition_cannot_be_written(engine: Engine) -> None:
    done, ev = _job(engine, "terminated"), _job(engine, "event")
    with engine.begin() as c, pytest.raises(StateError):
        change_state(c, [done], JobState.TERMINATED, JobState.RUNNING, return_code=0)
    with engine.begin() as c, pytest.raises(StateError):
        change_state(c, ev, JobState.EVENT, JobState.TO_LAUNCH)
    with engine.begin() as c, pytest.raises(StateError):  # one forbidden row: nothing written
        change_states(c, [{"id": done, "old": "terminated", "new": "event"},
                          {"id": ev, "old": "event", "new": "running", "return_code": 3}])
    assert (_state(engine, done), _state(engine, ev)) == ("terminated", "event")


def test_a_change_is_guarded_by_the_state_read(engine: Engine) -> None:
    jid = _job(engine, "running")
    with engine.begin() as c:
        assert change_state(c, jid, JobState.REMOTE_WAITING, JobState.RUNNING) == []  # it moved on
        change_states(c, [{"id": jid, "old": "submitted", "new": "terminated", "return_code": 0}])
    assert _state(engine, jid) == "running"
    with engine.begin() as c:
        assert change_state(c, [jid], UNFINISHED_JOB_STATES, JobState.EVENT) == [jid]
    assert _state(engine, jid) == "event"


def test_every_allowed_transition_is_written(engine: Engine) -> None:
    for old, news in JOB_TRANSITIONS.items():
        for new in news:
            jid = _job(engine, old)
            with engine.begin() as c:
                assert change_state(c, jid, old, new) == [jid]
            assert _state(engine, jid) == new
    assert set(sources_of(JobState.EVENT)) == set(JobState)  # a job can always be marked an event
