"""Judas (spec §10.3): the notification pass over not-yet-notified events.

Woken by NOTIFY "cigri_judas" (or SIGUSR1) and at least every JUDAS_POLL seconds.
Rules as CiGri3 (filter, aggregated errors, blacklists, log events, generic events),
with the §15.2 #28 fixes: the caps send exactly NOTIFICATIONS_MAX_LOG / _MAX_EVENTS
messages, the overflow message names the right kind of events, an aggregated message
quotes the first event *of that campaign*. Events no rule notifies (closed job traces,
QUEUED_FOR_TOO_LONG…) are marked notified as "deliberately skipped", so the unnotified
set — and the cost of a pass — stays proportional to what is new."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from cigri.config import Conf, get_conf
from cigri.db import campaigns as dbcampaigns
from cigri.db import clusters as dbclusters
from cigri.db import events as dbevents
from cigri.db.engine import transaction
from cigri.engine.notifications import Message, Notifier

log = logging.getLogger("cigri.judas")

NEVER = ("RESUBMIT", "RESUBMIT_END")  # open ones are left for colombo to close
SKIPPED_CODES = ("RESUBMIT", "RESUBMIT_END", "FRAG", "QUEUED_FOR_TOO_LONG", "NIKITA_CLEAN_AFFINITY")
AGGREGATED = ("RUNNER_SUBMIT_ERROR", "EXIT_ERROR", "CONTAINER_ERROR", "RUNNER_SUBMIT_TIMEOUT",
              "RUNNER_SUBMIT_TOO_LARGE", "RUNNER_SUBMIT_TOKEN_NOT_FOUND", "RUNNER_SUBMIT_PERMISSION_DENIED")
HIGH_LOG = ("RUNNER_FAILED", "ALMIGHTY_TERMINATING", "ALMIGHTY_STARTING", "JUDAS_FAILED", "CHILD_TIMEOUT",
            "COLOMBO_FAILED", "METASCHEDULER_FAILED", "UPDATOR_FAILED", "NIKITA_FAILED")
MEDIUM = ("TIMEOUT", "CONNECTION_REFUSED", "SOCKET_ERROR", "HOST_UNREACHABLE", "CONNECTION_RESET", "SSL_ERROR",
          "UNDER_STRESS", "WALLTIME_WARNING", "CIGRI_WALLTIME")
PASS_LIMIT = 10000  # events examined per pass (the rest waits for the next one)


@dataclass
class PassResult:
    messages: list[Message] = field(default_factory=list)
    marked: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)  # kept unnotified: their server was unreachable


def _selected(ev: dict[str, Any]) -> bool:
    """CiGri3's three event sets (spec §10.3 items 1-3)."""
    if ev["state"] == "open" and ev["code"] not in NEVER:
        return True
    if ev["class"] == "notify":
        return True
    return ev["class"] == "log" and ev["code"] != "QUEUED_FOR_TOO_LONG"


def build_messages(evs: list[dict[str, Any]], owners: dict[int, str], names: dict[int, str],
                   conf: Conf) -> list[Message]:
    """The messages of one pass, in CiGri3's order (aggregated, blacklists, log, generic)."""
    msgs: list[Message] = []
    rest: list[dict[str, Any]] = []
    # aggregated errors: one message per (code, campaign), quoting that campaign's first event
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for ev in evs:
        if ev["code"] in AGGREGATED and ev["campaign_id"] is not None:
            groups.setdefault((ev["code"], int(ev["campaign_id"])), []).append(ev)
        else:
            rest.append(ev)
    for (code, cid), group in groups.items():
        first = min(group, key=lambda e: e["id"])
        msgs.append(Message(f"{len(group)} {code} event(s) on campaign #{cid}",
                            f"You have {code} event(s) on campaign #{cid}. Please, check cigri events. "
                            f"The first event says:\n{first['message'] or ''}", "high", user=owners.get(cid),
                            events=[int(e["id"]) for e in group]))
    # blacklists
    evs, rest = rest, []
    seen_pairs: dict[tuple[int, int], Message] = {}
    for ev in evs:
        if ev["code"] != "BLACKLIST":
            rest.append(ev)
            continue
        cl = ev["cluster_id"]
        name = names.get(int(cl), str(cl)) if cl is not None else "?"
        if ev["class"] == "campaign" and ev["campaign_id"] is not None:
            key = (int(ev["campaign_id"]), int(cl or 0))
            if key in seen_pairs:
                seen_pairs[key].events.append(int(ev["id"]))
                continue
            cid = key[0]
            seen_pairs[key] = Message(f"Cluster {name} blacklisted for campaign #{cid}",
                                      f"Cluster {name} is blacklisted for campaign #{cid}, please check grid events "
                                      "for details", "high", user=owners.get(cid), admin=True, admin_severity="medium",
                                      events=[int(ev["id"])])
            msgs.append(seen_pairs[key])
        else:
            msgs.append(Message(f"Cluster {name} blacklisted!",
                                f"Cluster {name} is blacklisted because of event {ev['parent']}", "high",
                                admin=True, events=[int(ev["id"])]))
    # log events (admin), capped
    logs = [e for e in rest if e["class"] == "log"]
    rest = [e for e in rest if e["class"] != "log"]
    cap = int(conf.get("NOTIFICATIONS_MAX_LOG"))
    if len(logs) > cap:
        msgs.append(Message("Too many log events!", f"{len(logs)} new log events: only the first {cap} are "
                            "notified. Please check the events with gridevents.", "high", admin=True,
                            events=[int(e["id"]) for e in logs[cap:]]))
    for ev in logs[:cap]:
        msgs.append(Message(f"New log event #{ev['id']}: {ev['code']}", ev["message"] or "",
                            "high" if ev["code"] in HIGH_LOG else "low", admin=True, events=[int(ev["id"])]))
    # generic events, capped
    cap = int(conf.get("NOTIFICATIONS_MAX_EVENTS"))
    if len(rest) > cap:
        msgs.append(Message("Too many events!", f"{len(rest)} new events: only the first {cap} are notified. "
                            "Please check the events with gridevents.", "high", admin=True,
                            events=[int(e["id"]) for e in rest[cap:]]))
    for ev in rest[:cap]:
        sev = "low" if ev["code"] == "NEW_CAMPAIGN" else "medium" if ev["code"] in MEDIUM else "high"
        subject = f"New event #{ev['id']}: {ev['code']}"
        cid = ev["campaign_id"]
        if cid is not None:
            if ev["cluster_id"] is not None:
                subject += f" on cluster {names.get(int(ev['cluster_id']), ev['cluster_id'])}"
            subject += f" for campaign #{cid}"
        if ev["parent"] is not None:
            subject += f" because of event #{ev['parent']}"
        if cid is not None:
            msgs.append(Message(subject, ev["message"] or "", sev, user=owners.get(int(cid)), events=[int(ev["id"])]))
        else:
            msgs.append(Message(subject, ev["message"] or "", sev, admin=True, events=[int(ev["id"])]))
    return msgs


def notification_pass(engine: Engine, conf: Conf | None = None, notifier: Notifier | None = None) -> PassResult:
    """Read the unnotified events, send, then mark them (sending happens outside any
    transaction so colombo and the runners are never blocked by a slow SMTP server).

    Each message is delivered to each recipient independently: a malformed address, a
    refused recipient or a failing channel costs only that delivery. A message is kept for
    the next pass only when its server could not be reached and nobody got it, so no one
    receives a message twice."""
    conf = conf or get_conf()
    res = PassResult()
    with engine.connect() as conn:
        rows = dbevents.unnotified(conn, PASS_LIMIT)
        chosen: list[dict[str, Any]] = []
        for ev in rows:
            if ev["state"] == "open" and ev["code"] in NEVER:
                continue  # colombo closes it soon; skipped then
            if _selected(ev) and ev["code"] not in SKIPPED_CODES:
                chosen.append(ev)
            else:
                res.skipped.append(int(ev["id"]))
        if not chosen and not res.skipped:
            return res
        cids = sorted({int(e["campaign_id"]) for e in chosen if e["campaign_id"] is not None})
        res.messages = build_messages(chosen, dbcampaigns.owners(conn, cids), dbclusters.all_cluster_names(conn),
                                      conf)
        own = notifier is None
        notifier = notifier or Notifier(conf)
        retry: set[int] = set()
        try:
            for msg in res.messages:
                outcome = notifier.send(conn, msg)
                if outcome.unreachable and not outcome.delivered:
                    retry.update(msg.events)
        finally:
            if own:
                notifier.close()
    res.retried = sorted(retry)
    res.marked = [int(e["id"]) for e in chosen if int(e["id"]) not in retry] + res.skipped
    with transaction(engine) as conn:
        dbevents.mark_notified(conn, res.marked)
    if res.messages:
        log.info("Notification pass: %d messages for %d events", len(res.messages), len(chosen))
    if retry:
        log.warning("Notification pass: %d events kept for the next pass (notification server unreachable)",
                    len(retry))
    return res
