"""Registering a Slurm cluster: `cigri-admin cluster add --batch slurm` and `cluster set`
store how best-effort is done there and how CiGri authenticates, and refuse (one message,
nothing stored) what could not work."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy.engine import Engine

from cigri.cli.admin import cli
from cigri.db.clusters import get_cluster, list_clusters


def run(*args: str) -> tuple[int, str]:
    """(exit code, what the user reads): refusals are CliErrors, printed by the command's main."""
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output + (str(r.exception) if r.exception and r.exit_code else "")


def test_add_a_slurm_cluster_with_its_besteffort_partition(pg_engine: Engine, tmp_path: object) -> None:
    code, out = run("cluster", "add", "sl", "http://127.0.0.1:6920/", "--batch", "slurm", "--auth", "jwt",
                    "--resource-unit", "core", "--normal-partition", "normal", "--besteffort-partition",
                    "bestcancel", "--besteffort-mode", "cancel", "--jwt-key-file", "/etc/cigri/sl.key")
    assert code == 0 and "Cluster sl added" in out, out
    with pg_engine.connect() as c:
        info = get_cluster(c, name="sl")
    assert (info.batch, info.api_auth_type, info.normal_partition, info.besteffort_partition, info.besteffort_qos,
            info.besteffort_mode, info.jwt_key_file) == ("slurm", "jwt", "normal", "bestcancel", None, "cancel",
                                                         "/etc/cigri/sl.key")
    code, out = run("cluster", "list")
    assert "sl slurm http://127.0.0.1:6920/ auth=jwt normal_partition=normal besteffort_partition=bestcancel " \
           "besteffort_mode=cancel jwt=signed" in out
    code, out = run("cluster", "set", "sl", "--besteffort-partition", "", "--besteffort-qos", "scavenger",
                    "--besteffort-mode", "requeue")
    assert code == 0, out
    with pg_engine.connect() as c:
        info = get_cluster(c, name="sl")
    assert (info.besteffort_partition, info.besteffort_qos, info.besteffort_mode) == (None, "scavenger", "requeue")


def test_slurm_settings_that_cannot_work_are_refused(pg_engine: Engine) -> None:
    base = ["cluster", "add", "x", "http://127.0.0.1:6920/", "--batch", "slurm"]
    cases = [
        (["--auth", "cert"], "A Slurm cluster authenticates with --auth jwt"),
        (["--auth", "jwt", "--besteffort-partition", "be"], "--besteffort-mode cancel or requeue"),
        (["--auth", "jwt", "--besteffort-mode", "cancel"], "--besteffort-mode needs --besteffort-partition"),
        (["--auth", "jwt", "--besteffort-mode", "later"], "Invalid value for '--besteffort-mode'"),
    ]
    for extra, message in cases:
        code, out = run(*base, *extra)
        assert code != 0 and message in out, (extra, out)
    code, out = run("cluster", "add", "o", "http://127.0.0.1:1/", "--besteffort-partition", "be")
    assert code != 0 and "--besteffort-partition is for Slurm clusters (--batch slurm)" in out
    code, out = run("cluster", "add", "o", "http://127.0.0.1:1/")
    assert code == 0
    code, out = run("cluster", "set", "o", "--normal-partition", "normal")
    assert code != 0 and "is for Slurm clusters" in out
    code, out = run("cluster", "set", "o")
    assert code != 0 and "Nothing to change" in out
    with pg_engine.connect() as c:
        assert [cl.name for cl in list_clusters(c, enabled_only=False)] == ["o"]
