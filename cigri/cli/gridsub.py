"""gridsub: submit campaigns (JDL) or add tasks to a campaign (spec §12.2)."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from cigri.cli.client import CONTEXT, ApiClient, CliError, echo_json, err, progress_lines, run_command, version_option

CHUNK = 256 * 1024


def _load_jdl(text: str, where: str) -> dict[str, Any]:
    try:
        jdl = json.loads(text)
    except ValueError as e:
        raise CliError(f"Error: {where} is not valid JSON: {e}") from None
    if not isinstance(jdl, dict):
        raise CliError(f"Error: {where} must be a JSON object (the JDL)")
    return jdl


def _param_path(path: str) -> str:
    """param_file is read here, with the user's identity and environment (spec §15.2 #33)."""
    p = os.path.expandvars(os.path.expanduser(path.replace("{HOME}", "~") if path.startswith("{HOME}") else path))
    return os.path.abspath(p)


def _stream_jdl(jdl: dict[str, Any], param_path: str) -> tuple[Iterator[bytes], int]:
    """The JDL with `params` read from the file, as a chunked JSON body (never all in memory)."""
    rest = {k: v for k, v in jdl.items() if k != "param_file"}
    head = json.dumps(rest)[:-1] + (", " if rest else "") + '"params": ['
    try:
        f = open(param_path, "rb")  # noqa: SIM115 - closed by the generator
    except OSError as e:
        raise CliError(f"Error: cannot read param_file '{param_path}': {e.strerror}") from None
    size = os.fstat(f.fileno()).st_size

    def gen() -> Iterator[bytes]:
        try:
            yield head.encode()
            buf: list[str] = []
            blen = 0
            first = True
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise CliError(f"Error: param_file '{param_path}', line {n}: not valid UTF-8") from None
                if not line:
                    continue
                item = json.dumps(line)
                buf.append(item if first else "," + item)
                first = False
                blen += len(item) + 1
                if blen >= CHUNK:
                    yield "".join(buf).encode()
                    buf, blen = [], 0
            yield ("".join(buf) + "]}").encode()
        finally:
            f.close()

    return gen(), size


IN_MEMORY_LIMIT = 64 * 1024 * 1024


def _jdl_with_params(jdl: dict[str, Any], param_path: str) -> bytes:
    rest = {k: v for k, v in jdl.items() if k != "param_file"}
    try:
        with open(param_path, encoding="utf-8") as f:
            rest["params"] = [ln for ln in (raw.strip() for raw in f) if ln]
    except UnicodeDecodeError as e:
        raise CliError(f"Error: param_file '{param_path}' is not valid UTF-8 ({e})") from None
    except OSError as e:
        raise CliError(f"Error: cannot read param_file '{param_path}': {e.strerror}") from None
    return json.dumps(rest).encode()


def _file_duplicate(param_path: str) -> str | None:
    """Where the param_file repeats a parameter name, in the file's own 1-based line numbers
    (the server only sees the list of non-empty lines). Error path only."""
    seen: dict[str, int] = {}
    try:
        with open(param_path, encoding="utf-8", errors="replace") as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                name = line.split(None, 1)[0]
                if name in seen:
                    return (f"duplicate parameter name {name!r} at lines {seen[name]} and {n} "
                            f"of param_file '{param_path}'")
                seen[name] = n
    except OSError:
        return None
    return None


class _ProgressBody(io.BytesIO):
    """A request body that draws the upload progress as it is read."""

    def __init__(self, data: bytes, bar: Any) -> None:
        super().__init__(data)
        self.bar = bar

    def read(self, n: int | None = -1) -> bytes:
        chunk = super().read(n)
        self.bar.update(len(chunk))
        return chunk


def _with_progress(data: bytes, label: str) -> Any:
    if len(data) < 1_000_000 or not sys.stderr.isatty():
        return data
    bar = click.progressbar(length=len(data), label=label, file=sys.stderr)
    return _ProgressBody(data, bar)


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  gridsub -f povray.jdl                 submit a campaign
  gridsub -c 12 -J '["p1 1", "p2 2"]'   add two tasks to campaign 12
  gridsub -c 12 -F more_params.json     add the tasks of a JSON array file
A param_file named in the JDL is read here, as you, and its lines are sent to the server.""")
@click.option("-f", "--file", "files", multiple=True, type=click.Path(dir_okay=False),
              help="JDL file to submit (repeatable: one campaign each).")
@click.option("-j", "--json", "jsons", multiple=True, metavar="JSON", help="JDL given inline (repeatable).")
@click.option("-c", "--campaign", type=int, help="Campaign to add tasks to (with -F/-J).")
@click.option("-F", "--jobfile", type=click.Path(dir_okay=False), help="File with a JSON array of parameter lines.")
@click.option("-J", "--jsonjob", metavar="JSON", help="Inline JSON array of parameter lines.")
@click.option("-d", "--details", is_flag=True, help="Also print the JSON returned by the API.")
@version_option("gridsub")
def cli(files: tuple[str, ...], jsons: tuple[str, ...], campaign: int | None, jobfile: str | None,
        jsonjob: str | None, details: bool) -> int:
    """Submit CiGri campaigns described by a JDL, or add tasks to a campaign."""
    if not files and not jsons and not jobfile and not jsonjob:
        err("You must give a JDL (-f FILE or -j JSON), or tasks to add (-c ID with -F/-J).")
        click.echo(click.get_current_context().get_help(), err=True)
        return 0
    api = ApiClient()
    failed = False
    bodies: list[tuple[str, Any, int]] = []
    param_files: dict[int, str] = {}  # body index -> param_file read for it
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise CliError(f"Error: cannot read JDL file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise CliError(f"Error: JDL file {path} is not valid UTF-8") from None
        jdl = _load_jdl(text, f"JDL file {path}")
        if "param_file" in jdl and isinstance(jdl["param_file"], str) and "params" not in jdl:
            ppath = _param_path(jdl["param_file"])
            try:
                psize = os.path.getsize(ppath)
            except OSError as e:
                raise CliError(f"Error: cannot read param_file '{ppath}': {e.strerror}") from None
            param_files[len(bodies)] = ppath
            if psize <= IN_MEMORY_LIMIT:  # fast path: C JSON encoder, Content-Length
                data = _jdl_with_params(jdl, ppath)
                bodies.append((path, _with_progress(data, "Sending parameters"), len(data)))
            else:  # huge files: streamed, never all in memory
                gen, size = _stream_jdl(jdl, ppath)
                bodies.append((path, progress_lines(gen, size, "Sending parameters"), size))
        else:
            bodies.append((path, text.encode(), len(text)))
    for i, text in enumerate(jsons):
        _load_jdl(text, f"JDL #{i + 1}")
        bodies.append((f"JDL #{i + 1}", text.encode(), len(text)))
    for i, (_, data, _) in enumerate(bodies):
        r = api.post("/campaigns", data=data, headers={"Content-Type": "application/json"})
        if isinstance(data, _ProgressBody):
            data.bar.render_finish()
        if r.status == 201:
            click.echo("Campaign successfully submitted")
            if details:
                echo_json(r.body)
            click.echo(f"CAMPAIGN_ID={r.body['id']}")
        else:
            failed = True
            if isinstance(r.body, dict) and r.body.get("title") == "Admission rule error":
                err(f"Admission rule error: \n  {r.message}")
            elif r.status == 403:
                err(f"Error: not allowed: {r.message}")
            else:
                msg = r.message
                if i in param_files and "duplicate parameter name" in msg:
                    msg = f"Error submitting campaign: {_file_duplicate(param_files[i]) or msg}"
                err(f"Error: {msg}")
    if jobfile or jsonjob:
        if campaign is None:
            err("Please provide a campaign ID to add jobs in it")
            return 1
        payloads: list[tuple[Any, int]] = []
        if jobfile:
            try:
                size = os.path.getsize(jobfile)
                tasks_file = open(jobfile, "rb")  # noqa: SIM115 - streamed then closed by requests
            except OSError as e:
                raise CliError(f"Error: cannot read {jobfile}: {e.strerror}") from None
            chunks = iter(lambda: tasks_file.read(CHUNK), b"")
            payloads.append((progress_lines(chunks, size, "Sending tasks"), size))
        if jsonjob:
            try:
                lines = json.loads(jsonjob)
            except ValueError as e:
                raise CliError(f"Error: -J is not valid JSON: {e}") from None
            if not isinstance(lines, list):
                raise CliError("Error: -J must be a JSON array of parameter lines")
            payloads.append((json.dumps(lines).encode(), 0))
        for data, _ in payloads:
            r = api.post(f"/campaigns/{campaign}/jobs", data=data, headers={"Content-Type": "application/json"})
            if r.status == 201:
                click.echo(f"Jobs successfully added to campaign {campaign}")
                if details:
                    echo_json(r.body)
            else:
                failed = True
                err(f"Error submitting campaign: {r.message}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command(cli, argv))
