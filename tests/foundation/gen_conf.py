"""Regenerate conf/cigri.conf from cigri.config.VARIABLES (run after adding a variable):

    .venv/bin/python tests/foundation/gen_conf.py

Comments come from DOCS below, else from the variable's `doc`."""

from __future__ import annotations

from pathlib import Path

from cigri.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]

DOCS = {
    "API_MAX_BODY_SIZE": "largest request body (bytes) the API reads: a JDL with its params, or tasks added to a\n"
                         "campaign; bigger ones get 413 (other bodies: 64 KiB). 256 MiB holds about 3 million\n"
                         "parameter lines of 80 characters; add more with `gridsub -c ID -F FILE`.",
    "DATABASE_TYPE": "PostgreSQL (production) or SQLite (embedded single-machine mode)",
    "DATABASE_HOST": "PostgreSQL host", "DATABASE_PORT": "PostgreSQL port",
    "DATABASE_NAME": "database name (CiGri3 production convention: cigri3)",
    "DATABASE_USER_NAME": "database role", "DATABASE_USER_PASSWORD": "its password (keep this file mode 0640)",
    "DATABASE_SSL_MODE": "libpq sslmode: disable, allow, prefer, require, verify-ca, verify-full",
    "DATABASE_PATH": "SQLite database file (DATABASE_TYPE = SQLite)",
    "INSTALL_PATH": "informational",
    "REMOTE_WAITING_TIMEOUT": "seconds a job may stay remote_waiting, and a task may stay queued, before nikita acts",
    "AUTOFIX_DELAY": "seconds between API probes of auto-fixable cluster events",
    "DEFAULT_JOB_RESOURCES": "default JDL 'resources' (OAR resource request without walltime)",
    "DEFAULT_JOB_WALLTIME": "default JDL 'walltime'",
    "STRESS_FACTOR": "a cluster whose OAR stress factor reaches this value is 'under stress'",
    "PID_FILE": "PID file of the almighty ('' = none)",
    "LOG_FILE": "STDOUT, STDERR or a file path",
    "LOG_LEVEL": "DEBUG, INFO, WARN, ERROR or FATAL",
    "LOG_JOBS": "1 = append every job payload submitted to a cluster to LOG_JOBS_DIRECTORY/<cluster>_<user>",
    "LOG_JOBS_DIRECTORY": "where LOG_JOBS dumps go",
    "STDERR_TAIL": "lines of a job's stderr quoted in EXIT_ERROR events",
    "REST_QUERIES_TIMEOUT": "seconds per REST request to a cluster API",
    "REST_CLIENT_CERTIFICATE_FILE": "client certificate (clusters with api_auth_type cert)",
    "REST_CLIENT_KEY_FILE": "client key (clusters with api_auth_type cert)",
    "REST_CLIENT_CA_FILE": "CA bundle used to verify cluster APIs ('' = system bundle)",
    "REST_CLIENT_VERIFY_SSL": "verify the certificates of cluster APIs",
    "RUNNER_MIN_CYCLE_DURATION": "minimum duration (s) of a runner cycle",
    "RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "initial and minimum tap rate (jobs submitted per cycle)",
    "RUNNER_TAP_INCREASE_FACTOR": "multiplicative increase/decrease of a tap rate",
    "RUNNER_TAP_INCREASE_MAX": "maximum tap rate (array size)",
    "RUNNER_TAP_GRACE_PERIOD": "seconds after closing a tap during which it is neither decreased nor bypassed",
    "RUNNER_TEMPORAL_GROUPING_DURATION": "target duration (s) of a temporal-grouping batch",
    "RUNNER_MAX_TEMPORAL_GROUPED_JOBS": "maximum tasks per temporal-grouping batch",
    "API_HEADER_USERNAME": "header carrying the user name set by a trusted front-end (CiGri3 compatibility)",
    "CAMPAIGN_THROUGHPUT_WINDOW": "window (s) of the campaign throughput statistics",
    "NOTIFICATIONS_SMTP_SERVER": "SMTP host ('' = mail notifications disabled)",
    "NOTIFICATIONS_SMTP_PORT": "SMTP port", "NOTIFICATIONS_SMTP_FROM": "sender address",
    "NOTIFICATIONS_SMTP_SUBJECT_TAG": "prefix of mail subjects and instant messages",
    "NOTIFICATIONS_XMPP_SERVER": "XMPP server ('' = disabled)", "NOTIFICATIONS_XMPP_PORT": "XMPP port",
    "NOTIFICATIONS_XMPP_IDENTITY": "bot JID", "NOTIFICATIONS_XMPP_PASSWORD": "bot password",
    "GRID_USAGE_UPDATE_PERIOD": "minimum seconds between grid_usage snapshots (0 disables them)",
    "GRID_USAGE_SYNC_TIME": "seconds each usage worker waits before inserting",
    "API_HOST": "client side (api-clients.conf): API host", "API_PORT": "client side: API port",
    "API_BASE": "client side: API path prefix", "API_TIMEOUT": "client side: HTTP read timeout (s)",
    "API_SSL": "client side: use HTTPS unless 'false'", "API_VERIFY_SSL": "client side: certificate verification",
}
HEADS = {"DATABASE_TYPE": "Database", "REMOTE_WAITING_TIMEOUT": "Engine (CiGri3 variables, spec 13.2)",
         "API_HOST": "Client side (normally in api-clients.conf)", "ALMIGHTY_CYCLE": "CiGri-py additions"}


def render() -> str:
    out = ['# CiGri configuration (CiGri3 format: VAR = "value"; "#" starts a comment line).',
           "# Every variable CiGri knows is listed with its default. Unknown variables and",
           "# malformed values are refused at start-up with the file and line named.",
           "# Lookup: $CIGRICONFFILE, $CIGRICONFDIR/cigri.conf, $CIGRIDIR/cigri.conf, ./cigri.conf,",
           "# ./etc/cigri.conf, /etc/cigri/cigri.conf.", ""]
    for name, var in VARIABLES.items():
        if name in HEADS:
            out += ["", "#" + "-" * 20 + " " + HEADS[name]]
        doc = DOCS.get(name) or var.doc
        if doc:
            out += [f"# {line}" for line in doc.splitlines()]
        value = ("1" if var.default else "0") if isinstance(var.default, bool) else str(var.default)
        out.append(f'{name} = "{value}"')
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    (ROOT / "conf" / "cigri.conf").write_text(render())
    print("conf/cigri.conf regenerated")
