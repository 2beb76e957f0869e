"""SQLAlchemy Table objects for the CiGri3 schema (sql/cigri3.sql). The DDL in sql/
is the source of truth; tests check both databases reflect these tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from cigri.clock import now  # noqa: F401 - re-exported: the clock the data layer stamps rows with

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware timestamps on PostgreSQL, naive UTC text on SQLite, aware UTC in Python."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            value = datetime.fromtimestamp(value, UTC)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _enum(name: str, *labels: str) -> sa.Enum:
    return sa.Enum(*labels, name=name, create_constraint=False, native_enum=True, validate_strings=False)


API = _enum("api", "oar2_5", "g5k", "oar3", "local", "slurm")
AUTH_TYPE = _enum("auth_type", "none", "password", "cert", "jwt")
CAMPAIGN_STATE = _enum("campaign_state", "cancelled", "in_treatment", "paused", "terminated")
JOB_STATE = _enum("job_state", "to_launch", "launching", "submitted", "running", "remote_waiting",
                  "terminated", "event", "batch_waiting")
EVENT_CLASS = _enum("event_class", "cluster", "job", "campaign", "notify", "log")
EVENT_STATE = _enum("event_state", "open", "closed")
CHECKBOX = _enum("checkbox", "yes", "no")
NOTIFICATIONS = _enum("notifications", "mail", "xmpp", "log", "irc")
TAP_STATE = _enum("tap_state", "open", "closed")

TS = UTCDateTime

schema_version = sa.Table(
    "schema", metadata,
    sa.Column("version", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
)

clusters = sa.Table(
    "clusters", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("api_url", sa.String(255), nullable=False),
    sa.Column("api_auth_type", AUTH_TYPE, nullable=False, server_default="password"),
    sa.Column("api_username", sa.String(255)),
    sa.Column("api_password", sa.String(255)),
    sa.Column("api_auth_header", sa.String(255)),
    sa.Column("api_chunk_size", sa.Integer, nullable=False, server_default="100"),
    sa.Column("api_limit", sa.Integer, nullable=False, server_default="100"),
    sa.Column("ssh_host", sa.String(255)),
    sa.Column("batch", API, nullable=False),
    sa.Column("resource_unit", sa.String(255), server_default="resource_id"),
    sa.Column("power", sa.Integer),
    sa.Column("properties", sa.String(255)),
    sa.Column("stress_factor", sa.Float, server_default="0"),
    sa.Column("enabled", sa.Boolean, server_default=sa.true()),
    sa.Column("container_engines", sa.String(255)),  # CiGri-py: engines offered (cigri.containers)
    # CiGri-py: how best-effort is done where there is no OAR besteffort type, and a key to
    # sign users' tokens with (Slurm: docs/slurm.md)
    sa.Column("normal_partition", sa.String(255)),
    sa.Column("besteffort_partition", sa.String(255)),
    sa.Column("besteffort_qos", sa.String(255)),
    sa.Column("besteffort_mode", sa.String(16)),
    sa.Column("jwt_key_file", sa.String(255)),
)

users_mapping = sa.Table(
    "users_mapping", metadata,
    sa.Column("id", sa.Integer),
    sa.Column("grid_login", sa.String(255), primary_key=True),
    sa.Column("cluster_login", sa.String(255)),
    sa.Column("cluster_id", sa.Integer, primary_key=True),
)

campaigns = sa.Table(
    "campaigns", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("grid_user", sa.String(255), nullable=False),
    sa.Column("state", CAMPAIGN_STATE, nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255)),
    sa.Column("submission_time", TS),
    sa.Column("completion_time", TS),
    sa.Column("nb_jobs", sa.Integer),
    sa.Column("jdl", sa.Text),
)

campaign_properties = sa.Table(
    "campaign_properties", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("cluster_id", sa.Integer),
    sa.Column("campaign_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
)

parameters = sa.Table(
    "parameters", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("campaign_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(255)),
    sa.Column("param", sa.Text),
)

bag_of_tasks = sa.Table(
    "bag_of_tasks", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("campaign_id", sa.Integer, nullable=False),
    sa.Column("param_id", sa.Integer, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="10"),
)

jobs_to_launch = sa.Table(
    "jobs_to_launch", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("task_id", sa.BigInteger, nullable=False),
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("tag", sa.String(255)),
    sa.Column("queuing_date", TS),
    sa.Column("runner_options", sa.Text),
    sa.Column("order_num", sa.Integer, nullable=False, server_default="1"),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("campaign_id", sa.Integer, nullable=False),
    sa.Column("param_id", sa.Integer, nullable=False),
    sa.Column("batch_id", sa.Integer),
    sa.Column("cluster_id", sa.Integer),
    sa.Column("collect_id", sa.Integer),
    sa.Column("state", JOB_STATE, nullable=False),
    sa.Column("return_code", sa.Integer),
    sa.Column("submission_time", TS),
    sa.Column("start_time", TS),
    sa.Column("stop_time", TS),
    sa.Column("node_name", sa.String(255)),
    sa.Column("resources_used", sa.Integer),
    sa.Column("remote_id", sa.BigInteger),
    sa.Column("tag", sa.String(255)),
    sa.Column("runner_options", sa.Text),
    # CiGri-py: why the cluster killed this job (an Outcome: preempted, walltime, killed, lost)
    sa.Column("kill_cause", sa.String(32)),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("class", EVENT_CLASS, nullable=False),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("state", EVENT_STATE, nullable=False),
    sa.Column("job_id", sa.Integer),
    sa.Column("cluster_id", sa.Integer),
    sa.Column("campaign_id", sa.Integer),
    sa.Column("parent", sa.Integer),
    sa.Column("checked", CHECKBOX),
    sa.Column("notified", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("date_open", TS),
    sa.Column("date_closed", TS),
    sa.Column("date_update", TS),
    sa.Column("message", sa.Text),
)

queue_counts = sa.Table(
    "queue_counts", metadata,
    sa.Column("date", TS),
    sa.Column("campaign_id", sa.Integer),
    sa.Column("cluster_id", sa.Integer),
    sa.Column("jobs_count", sa.Integer),
)

admission_rules = sa.Table(
    "admission_rules", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.Text),
)

user_notifications = sa.Table(
    "user_notifications", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("grid_user", sa.String(255), nullable=False),
    sa.Column("type", NOTIFICATIONS),
    sa.Column("identity", sa.String(255)),
    sa.Column("severity", sa.String(32)),
)

grid_usage = sa.Table(
    "grid_usage", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("date", TS, nullable=False),
    sa.Column("cluster_id", sa.Integer),
    sa.Column("max_resources", sa.Integer),
    sa.Column("used_resources", sa.Integer),
    sa.Column("unavailable_resources", sa.Integer),
    sa.Column("used_by_cigri", sa.Integer),
)

users_priority = sa.Table(
    "users_priority", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("grid_user", sa.String(255), nullable=False),
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
)

tasks_affinity = sa.Table(
    "tasks_affinity", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("param_id", sa.Integer, nullable=False),
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
)

taps = sa.Table(
    "taps", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("campaign_id", sa.Integer, nullable=False),
    sa.Column("state", TAP_STATE, nullable=False, server_default="open"),
    sa.Column("rate", sa.Integer, nullable=False),
    sa.Column("close_date", TS),
)

#: CiGri-py: revoked API bearer tokens, kept until they would have expired
api_revoked_tokens = sa.Table(
    "api_revoked_tokens", metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("grid_user", sa.String(255)),
    sa.Column("expires", TS, nullable=False),
    sa.Column("revoked_at", TS, nullable=False),
)
