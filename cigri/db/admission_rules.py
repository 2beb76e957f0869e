"""admission_rules rows (the rules themselves run in cigri.admission's sandbox).

A CiGri3 database may hold several rows with one id: the table has no primary key, and
CiGri3's structure script inserts rule 1 with an explicit id without advancing
admission_rules_id_seq, so the first rule an admin adds also gets id 1. Until
`cigri-db upgrade` renumbers them (`repair_rules`), rows are told apart by their
physical address (ctid) and run in (id, ctid) order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.engine import is_sqlite
from cigri.db.schema import admission_rules as t

DISABLED_MARK = "# CIGRI-DISABLED"


def _order(conn: Connection) -> list[sa.ColumnElement[Any]]:
    second: sa.ColumnElement[Any] = sa.literal_column("rowid" if is_sqlite(conn) else "ctid")
    return [t.c.id, second]


def all_rules(conn: Connection) -> list[tuple[int, str]]:
    """Every rule (id, code), in the order they run."""
    return [(int(r.id), r.code or "") for r in conn.execute(sa.select(t.c.id, t.c.code).order_by(*_order(conn)))]


def active_rules(conn: Connection) -> list[tuple[int, str]]:
    """The rules a submission runs: not empty, not disabled by `cigri-db upgrade`."""
    return [(rid, code) for rid, code in all_rules(conn) if code and not code.startswith(DISABLED_MARK)]


def duplicate_ids(conn: Connection) -> list[tuple[int, int]]:
    """(id, number of rows) for every id held by more than one rule."""
    q = sa.select(t.c.id, sa.func.count()).group_by(t.c.id).having(sa.func.count() > 1).order_by(t.c.id)
    return [(int(i), int(n)) for i, n in conn.execute(q)]


@dataclass
class RulesReport:
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    disabled: list[int] = field(default_factory=list)


def repair_rules(conn: Connection, translate: Callable[[str], tuple[str, bool]],
                 is_seed: Callable[[str], bool]) -> RulesReport:
    """Give every rule its own id (PostgreSQL), then translate or disable CiGri3's Ruby rules
    one row at a time. No rule is ever dropped or merged with another: where several rows
    share an id, the CiGri3 seed rule (or else the oldest row) keeps it and the others get
    new ids after the highest one, in their physical order; the id sequence is moved past
    the highest id and the table gets the primary key CiGri3 lacked."""
    rep = RulesReport()
    if not is_sqlite(conn):
        rows = conn.execute(sa.text("SELECT ctid::text AS ctid, id, code FROM admission_rules ORDER BY id, ctid")).all()
        by_id: dict[int, list[tuple[str, str]]] = {}
        for r in rows:
            by_id.setdefault(int(r.id), []).append((r.ctid, r.code or ""))
        top = max(by_id, default=0)
        for rid, group in sorted(by_id.items()):
            if len(group) < 2:
                continue
            keeper = next((g for g in group if is_seed(g[1])), group[0])
            for ctid, _code in group:
                if ctid == keeper[0]:
                    continue
                top += 1
                conn.execute(sa.text("UPDATE admission_rules SET id = :new WHERE ctid = CAST(:ctid AS tid)"),
                             {"new": top, "ctid": ctid})
                rep.actions.append(f"admission rule {rid}: a second rule with id {rid} is now rule {top} "
                                   "(both kept)")
        seq = conn.execute(sa.text("SELECT pg_get_serial_sequence('admission_rules', 'id')")).scalar_one()
        if seq:
            conn.execute(sa.text("SELECT setval(CAST(:seq AS regclass), GREATEST(:top, 1), :called)"),
                         {"seq": seq, "top": top, "called": top > 0})
        has_pk = conn.execute(sa.text("SELECT 1 FROM pg_constraint WHERE conrelid = 'admission_rules'::regclass "
                                      "AND contype = 'p'")).first()
        if not has_pk:
            conn.execute(sa.text("ALTER TABLE admission_rules ADD PRIMARY KEY (id)"))
            rep.actions.append("admission_rules: primary key (id) added")
    for rid, code in all_rules(conn):
        if not code:
            continue
        new, ok = translate(code)
        if new == code:
            continue
        conn.execute(t.update().where(t.c.id == rid).values(code=new))
        if ok:
            rep.actions.append(f"admission rule {rid}: CiGri3 seed rule translated to Python")
        else:
            rep.disabled.append(rid)
            rep.warnings.append(f"admission rule {rid} is Ruby: disabled (kept as comments), rewrite it in Python")
    return rep
