"""End to end: a real `cigri-api` process, the grid* commands as real processes run
as two different Unix users (identity from the kernel over the Unix socket), TCP with
bearer tokens, and refused spoofing."""

from __future__ import annotations

import json
import os
import pwd
import re
from pathlib import Path

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.db import schema
from cigri.db.events import create_event
from tests.api.conftest import JDL, Server

JDL_TEXT = json.dumps(JDL)


def _submit(server: Server, user: str, jdl: str = JDL_TEXT) -> int:
    r = server.run("gridsub", "-j", jdl, user=user)
    assert r.returncode == 0, r.stderr
    assert "Campaign successfully submitted" in r.stdout
    m = re.search(r"CAMPAIGN_ID=(\d+)", r.stdout)
    assert m, r.stdout
    return int(m.group(1))


def test_two_unix_users_over_the_socket(server: Server, clusters: dict[str, int], pg_engine: Engine) -> None:
    cid = _submit(server, "alice")
    with pg_engine.connect() as c:
        owner = c.execute(sa.select(schema.campaigns.c.grid_user).where(schema.campaigns.c.id == cid)).scalar()
    assert owner == "alice"  # the kernel said so; nothing was sent by the client
    # bob cannot pause, cancel, read the JDL, tasks or events of alice's campaign
    r = server.run("griddel", "-p", str(cid), user="bob")
    assert r.returncode == 1 and f"Failed to pause campaign {cid}" in r.stderr
    r = server.run("griddel", str(cid), user="bob")
    assert r.returncode == 1 and f"Failed to cancel campaign {cid}" in r.stderr
    for args in (["-J", "-c", str(cid)], ["-f", "-c", str(cid)], ["-e", "-c", str(cid)]):
        r = server.run("gridstat", *args, user="bob")
        assert r.returncode == 1 and "not allowed" in r.stderr, (args, r.stdout, r.stderr)
    r = server.run("gridevents", "-c", str(cid), "-f", user="bob")
    assert r.returncode == 1 and "Failed to fix event(s)" in r.stderr
    # bob still sees the public list
    r = server.run("gridstat", user="bob")
    assert r.returncode == 0 and re.search(rf"^{cid}\s+test_api\s+alice\s", r.stdout, re.M)
    # alice can
    r = server.run("griddel", "-p", "-v", str(cid), user="alice")
    assert r.returncode == 0 and f"Campaign {cid} paused" in r.stdout
    r = server.run("griddel", "-r", str(cid), user="alice")
    assert r.returncode == 0
    r = server.run("gridstat", "-J", "-c", str(cid), user="alice")
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "test_api"
    r = server.run("griddel", str(cid), user="alice")
    assert r.returncode == 0
    with pg_engine.connect() as c:
        st = c.execute(sa.select(schema.campaigns.c.state).where(schema.campaigns.c.id == cid)).scalar()
    assert st == "cancelled"


def test_gridstat_outputs(server: Server, clusters: dict[str, int], pg_engine: Engine) -> None:
    cid = _submit(server, "alice")
    r = server.run("gridstat", user="alice")
    lines = r.stdout.splitlines()
    assert lines[0] == "Campaign id Name                User             Submission time     S  Progress"
    assert lines[1].startswith("----------- ---")
    assert re.fullmatch(rf"{cid:<11d} test_api            alice            "
                        r"\d{4}-\d\d-\d\d \d\d-\d\d-\d\d R  0/10 \(0%\)", lines[2]), lines[2]
    assert server.run("gridstat", "-H", user="alice").stdout.splitlines()[0].startswith(str(cid))
    r = server.run("gridstat", "-c", str(cid), user="alice")
    assert r.returncode == 0
    out = r.stdout
    for expected in (f"Campaign: {cid}\n", "  Name: test_api\n", "  User: alice\n", "  State: in_treatment\n",
                     "  Progress: 0/10 (0%)\n", "  Stats: \n", "    jobs_throughput: ~ jobs/h\n",
                     "    remaining_time: ~ hours\n", "    failures_rate: 0.0 %\n", "  Clusters: \n",
                     "    dahu:\n", "      active_jobs: 0\n", "      prologue_ok: true\n"):
        assert expected in out, (expected, out)
    r = server.run("gridstat", "-c", str(cid), "--json", user="alice")
    assert json.loads(r.stdout)["stats"]["failures_rate"] == 0
    r = server.run("gridstat", "-c", str(cid), "-f", user="alice")
    job_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert len(job_lines) == 10 and job_lines[0].endswith(": *,*,pending,*,0,0")
    r = server.run("gridstat", "-c", "424242", user="alice")
    assert r.returncode == 1 and "Campaign 424242 not found!" in r.stderr
    r = server.run("gridstat", "-e", user="alice")
    assert r.returncode == 1 and "You must give a campaign id to print the events!" in r.stderr
    with pg_engine.begin() as c:
        create_event(c, "campaign", "EXIT_ERROR", campaign_id=cid, message="boom")
    r = server.run("gridevents", str(cid), user="alice")
    assert re.search(r"^\d+: \(open\) EXIT_ERROR at \S+\nboom$", r.stdout, re.M), r.stdout
    assert "e " in server.run("gridstat", "-H", user="alice").stdout
    r = server.run("gridevents", "-c", str(cid), "-f", "-v", user="alice")
    assert r.returncode == 0 and f"Campaign {cid} events closed" in r.stdout
    assert server.run("gridevents", str(cid), user="alice").stdout.strip() == "No events!"
    r = server.run("gridevents", "-r", "-c", str(cid), user="alice")
    assert r.returncode == 2 and "--resubmit must be used with --fix" in r.stderr


def test_gridsub_param_file_read_client_side(server: Server, clusters: dict[str, int]) -> None:
    """The param file lives in alice's home, readable only by her; gridsub streams its lines."""
    home = Path(pwd.getpwnam("alice").pw_dir)
    pw = pwd.getpwnam("alice")
    pf = home / "cigri-test-params.txt"
    jf = home / "cigri-test.jdl"
    try:
        pf.write_text("".join(f"p{i} {i}\n" for i in range(2000)) + "\n")
        jf.write_text(json.dumps({"name": "pf", "param_file": "~/cigri-test-params.txt",
                                  "clusters": {"dahu": {"exec_file": "e"}}}))
        for f in (pf, jf):
            os.chown(f, pw.pw_uid, pw.pw_gid)
            os.chmod(f, 0o600)
        cid = _submit_file(server, "alice", str(jf))
        r = server.run("gridstat", "-c", str(cid), "--json", user="alice")
        assert json.loads(r.stdout)["total_jobs"] == 2000
        # add tasks from a JSON array file
        arr = home / "cigri-test-more.json"
        arr.write_text(json.dumps(["x1 1", "x2 2"]))
        os.chown(arr, pw.pw_uid, pw.pw_gid)
        r = server.run("gridsub", "-c", str(cid), "-F", str(arr), user="alice")
        assert r.returncode == 0 and f"Jobs successfully added to campaign {cid}" in r.stdout
        r = server.run("gridsub", "-c", str(cid), "-J", '["x1 again"]', user="alice")
        assert r.returncode == 1 and "Error submitting campaign:" in r.stderr
        r = server.run("gridsub", "-c", str(cid), "-J", '["y"]', user="bob")
        assert r.returncode == 1
        arr.unlink()
    finally:
        for f in (pf, jf):
            f.unlink(missing_ok=True)


def _submit_file(server: Server, user: str, path: str) -> int:
    r = server.run("gridsub", "-f", path, user=user)
    assert r.returncode == 0, r.stderr
    return int(re.search(r"CAMPAIGN_ID=(\d+)", r.stdout).group(1))  # type: ignore[union-attr]


def test_gridsub_bad_jdl_names_the_problem(server: Server, clusters: dict[str, int]) -> None:
    r = server.run("gridsub", "-j", '{"name": "x", "clusters": {"dahu": {"exec_file": "e"}}}', user="alice")
    assert r.returncode == 1 and r.stderr.startswith("Error: Error submitting campaign:")
    r = server.run("gridsub", "-j", "{oops", user="alice")
    assert r.returncode == 1 and "not valid JSON" in r.stderr
    r = server.run("gridsub", "-j", json.dumps(JDL | {"clusters": {"nowhere": {"exec_file": "e"}}}), user="alice")
    assert r.returncode == 1 and "Error" in r.stderr
    r = server.run("gridsub", user="alice")
    assert r.returncode == 0 and "Usage:" in r.stderr


def test_tcp_spoofing_and_bearer_tokens(server: Server, clusters: dict[str, int]) -> None:
    cid = _submit(server, "alice")
    base = f"http://127.0.0.1:{server.port}"
    # a header claiming to be alice from a non-proxy address is refused
    r = requests.delete(f"{base}/campaigns/{cid}", headers={"X-Cigri-User": "alice"}, timeout=60)
    assert r.status_code == 403 and "not a trusted proxy" in r.json()["message"]
    r = requests.delete(f"{base}/campaigns/{cid}", timeout=60)
    assert r.status_code == 403
    assert requests.get(f"{base}/campaigns/{cid}", timeout=60).status_code == 200  # public summary
    # alice gets a token over the socket and uses it over TCP
    home = Path(pwd.getpwnam("alice").pw_dir)
    tok = home / ".cigri-test-token"
    try:
        r = server.run("gridtoken", "--api-token", user="alice")
        assert r.returncode == 0 and "saved in" in r.stdout, r.stderr
        assert oct(tok.stat().st_mode & 0o777) == "0o600"
        r = server.run("gridstat", "-J", "-c", str(cid), user="alice", tcp=True)
        assert r.returncode == 0 and json.loads(r.stdout)["name"] == "test_api"
        # bob, over TCP without a token, cannot read it; nor with alice's token copied? he cannot read the file
        r = server.run("gridstat", "-J", "-c", str(cid), user="bob", tcp=True)
        assert r.returncode == 1 and "not allowed" in r.stderr
    finally:
        tok.unlink(missing_ok=True)


def test_peer_credentials_raw(server: Server, clusters: dict[str, int]) -> None:
    """The identity of a raw socket client is its uid, whatever headers it sends."""
    code = ("import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
            "s.sendall(b'POST /campaigns HTTP/1.1\\r\\nHost: x\\r\\nX-Cigri-User: root\\r\\nContent-Length: 2\\r\\n"
            "Connection: close\\r\\n\\r\\n{}');b=b''\n"
            "while (c:=s.recv(4096)): b+=c\n"
            "print(b.decode())")
    pw = pwd.getpwnam("bob")
    import subprocess
    import sys

    r = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                        sys.executable, "-c", code, server.sock], capture_output=True, text=True, timeout=60)
    assert "403" in r.stdout.splitlines()[0] and "unix:bob" in r.stdout


def test_other_commands(server: Server, clusters: dict[str, int], pg_engine: Engine) -> None:
    cid = _submit(server, "alice")
    r = server.run("gridnotify", "-m", "alice@example.org", "-s", "high", "-v", user="alice")
    assert r.returncode == 0 and "New subscription created" in r.stdout
    r = server.run("gridnotify", "-m", "alice@example.org", user="alice")
    assert r.returncode == 2 and "Severity should be" in r.stderr
    r = server.run("gridnotify", "-l", user="alice")
    assert r.stdout.splitlines() == ["You have the following notification subscriptions:",
                                     " - mail on alice@example.org with severity high"]
    assert "alice@example.org" not in server.run("gridnotify", "-l", user="bob").stdout
    r = server.run("gridnotify", "-m", "alice@example.org", "-u", user="alice")
    assert r.returncode == 0
    r = server.run("gridclusters", user="alice")
    assert r.stdout.splitlines() == [f"{clusters['dahu']}: dahu (oar2_5)", f"{clusters['bigfoot']}: bigfoot (oar2_5)",
                                     f"{clusters['dahu-oar3']}: dahu-oar3 (oar3)"]
    with pg_engine.begin() as c:
        c.execute(schema.grid_usage.insert().values(date=schema.now(), cluster_id=clusters["dahu"], max_resources=80,
                                                    used_resources=40, used_by_cigri=20, unavailable_resources=8))
    r = server.run("gridclusters", "-u", user="alice")
    assert "(stress:0.0/0.8)" in r.stdout and "    used_by_cigri: 20" in r.stdout
    assert "Data temporarily unavailable" in r.stdout
    r = server.run("gridclusters", "-b", user="alice")
    assert "(80 resources)" in r.stdout and "Legend" in r.stdout
    assert json.loads(server.run("gridclusters", "--json", user="alice").stdout)[0]["usage"]["max_resources"] == 80
    r = server.run("gridtoken", "-i", str(clusters["dahu-oar3"]), "-t", "TOK", user="alice")
    assert r.returncode == 0 and r.stdout.strip() == "New token registered."
    r = server.run("gridtoken", "-l", user="alice")
    assert r.stdout.splitlines() == ["You have the following tokens:", f" - Cluster #{clusters['dahu-oar3']} : TOK"]
    r = server.run("gridtoken", "-i", str(clusters["bigfoot"]), "-t", "TOK", user="alice")
    assert r.returncode == 1 and "Failed to register token on cluster" in r.stderr
    r = server.run("gridclean", str(cid), user="alice")
    assert r.returncode == 0
    r = server.run("griddel", user="alice")
    assert r.returncode == 1 and "at least one campaign_id or job_id" in r.stderr
    r = server.run("gridstat", "--version")
    assert r.stdout.strip().startswith("gridstat v")
    r = server.run("gridevents", "--blacklist-cluster", str(clusters["dahu"]), user="alice")
    assert r.returncode == 1 and "Failed to add event: Only root can create an event." in r.stderr
    r = server.run("gridevents", "--blacklist-cluster", str(clusters["dahu"]))  # as root
    assert r.returncode == 0, r.stderr
    assert "CLUSTER_MANUALLY_DISABLED" in server.run("gridevents", "-g", user="alice").stdout


def test_unreachable_server_is_named(server: Server, tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f'API_SOCKET = "{tmp_path}/nope.sock"\n')
    import subprocess

    from tests.api.conftest import VENV_BIN

    r = subprocess.run([str(VENV_BIN / "gridstat")], env=dict(os.environ, CIGRICONFFILE=str(conf)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"API server not reachable at unix socket {tmp_path}/nope.sock" in r.stderr


def test_admin_tools(server: Server, clusters: dict[str, int], pg_engine: Engine) -> None:
    env_conf = server.conf_file
    import subprocess

    from tests.api.conftest import VENV_BIN

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / args[0]), *args[1:]], env=dict(os.environ, CIGRICONFFILE=env_conf),
                              capture_output=True, text=True, timeout=60)

    r = admin("newcluster", "tchernobyl", "https://frontend/oarapi-secured/", "cert", "kameleon", "kameleon", "",
              "tchernobyl", "oar2_5", "core", "100", "cluster='tchernobyl'")
    assert r.returncode == 0 and "Cluster tchernobyl added" in r.stdout, r.stderr
    r = admin("newcluster", "x", "u", "none", "", "", "", "h", "pbs", "core", "1", "")
    assert r.returncode == 1 and '"pbs" is not a valid batch system type. Valid types are: oar2_5' in r.stderr
    assert admin("newcluster", "too", "few").returncode == 1
    r = admin("cigri-admin", "cluster", "add", "c9", "http://127.0.0.1:1/", "--batch", "oar3", "--auth", "jwt")
    assert r.returncode == 0
    cl = int(re.search(r"id (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert admin("cigri-admin", "cluster", "disable", str(cl)).returncode == 0
    assert "c9 oar3 http://127.0.0.1:1/ auth=jwt (disabled)" in admin("cigri-admin", "cluster", "list").stdout
    assert admin("cigri-admin", "cluster", "enable", "999").returncode == 1
    assert "not trusted" not in admin("grid_test_cluster").stderr
    assert admin("grid_test_cluster").returncode == 1
    tok = admin("cigri-admin", "api-token", "bob").stdout.strip()
    r = requests.get(f"http://127.0.0.1:{server.port}/notifications", headers={"Authorization": f"Bearer {tok}"},
                     timeout=60)
    assert r.status_code == 200


def test_shared_list_fresh_across_workers(server: Server, clusters: dict[str, int], pg_engine: Engine) -> None:
    """The server runs several worker processes; a big (cached) campaign list shows a new
    campaign at once, whichever worker answers."""
    with pg_engine.begin() as c:
        c.execute(schema.campaigns.insert(), [
            {"grid_user": "bob", "state": "in_treatment", "type": "best-effort", "name": f"c{i}", "nb_jobs": 0,
             "submission_time": schema.now()} for i in range(60)])
    for _ in range(4):  # warm every worker's cache
        assert len(server.run("gridstat", "-H", user="alice").stdout.splitlines()) == 60
    cid = _submit(server, "alice")
    for _ in range(4):
        out = server.run("gridstat", "-H", user="bob").stdout
        assert re.search(rf"^{cid}\s", out, re.M), out[-300:]


def test_no_terminal_injection_in_command_output(server: Server, clusters: dict[str, int],
                                                 pg_engine: Engine) -> None:
    """#10 item 8: bob's campaign name and an event message carry escape sequences (clear
    screen, OSC 52 clipboard write) and newlines; alice's gridstat/gridevents show them
    escaped, on one line."""
    evil = "\x1b[2J\x1b]52;c;ZXZpbA==\x07pwn\nFAKE 99 line\r\u202e"
    cid = _submit(server, "bob", json.dumps(JDL | {"name": evil}))
    with pg_engine.begin() as c:
        create_event(c, "campaign", "EXIT_ERROR", campaign_id=cid, message="boom\x1b[31m\nsecond line")
    outputs = [server.run("gridstat", user="alice").stdout,
               server.run("gridstat", "-c", str(cid), user="bob").stdout,
               server.run("gridstat", "-c", str(cid), "-f", user="bob").stdout,
               server.run("gridevents", str(cid), user="bob").stdout]
    for out in outputs:
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out, out
        assert not any(ln.startswith("FAKE") for ln in out.splitlines()), out
    assert re.search(rf"^{cid}\s+\\x1b\[2J\\x1b\]52;c;", outputs[0], re.M), outputs[0]
    assert "  Name: \\x1b[2J\\x1b]52;c;ZXZpbA==\\x07pwn\\nFAKE 99 line\\r\\u202e\n" in outputs[1]
    assert "boom\\x1b[31m\nsecond line" in outputs[3]  # an event message keeps its lines
