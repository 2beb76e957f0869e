"""The JDL: parse, validate and expand a campaign description.

Every problem is reported as ONE `ParseError` naming the field (and the line of a
parameter file), never a traceback. Parameters are streamed (`iter_param_lines`):
an expanded JDL keeps `nb_jobs` / `param_file` instead of materialising the list,
so memory stays flat with the size of a parameter file.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import stat
from collections.abc import Iterator
from typing import Any

from cigri import containers
from cigri.config import Conf, get_conf
from cigri.errors import NotFound, ParseError

#: per-cluster fields, value kinds used for validation.
STRING_FIELDS = ("exec_file", "exec_directory", "resources", "project", "properties", "cluster_job_type",
                 "checkpointing_type", "output_gathering_method", "output_file", "output_destination")
WALLTIME_FIELDS = ("walltime", "prologue_walltime", "epilogue_walltime")
BOOL_FIELDS = ("test_mode", "temporal_grouping", "dimensional_grouping")
INT_FIELDS = ("max_jobs", "max_resubmit")
LINES_FIELDS = ("prologue", "epilogue")
CLUSTER_FIELDS = STRING_FIELDS + WALLTIME_FIELDS + BOOL_FIELDS + INT_FIELDS + LINES_FIELDS + ("type", "container")

#: global-only fields, never copied into clusters.
GLOBAL_FIELDS = ("name", "clusters", "params", "nb_jobs", "param_file", "jobs_type")

#: campaign_properties rows + CiGri-py's max_resubmit.
PROPERTY_NAMES = ("checkpointing_type", "dimensional_grouping", "epilogue", "exec_file", "output_destination",
                  "output_file", "output_gathering_method", "prologue", "properties", "resources",
                  "temporal_grouping", "walltime", "type", "test_mode", "max_jobs", "prologue_walltime",
                  "epilogue_walltime", "project", "exec_directory", "cluster_job_type", "max_resubmit",
                  "container")

CAMPAIGN_TYPES = ("best-effort", "besteffort", "normal", "semi-best-effort", "nightly")
BESTEFFORT_TYPES = ("best-effort", "besteffort", "semi-best-effort", "nightly")
JOBS_TYPES = ("normal", "desktop_computing")

#: upper bound of nb_jobs (a typo guard, not a resource limit: parameters are streamed).
MAX_NB_JOBS = 100_000_000
MAX_NAME_LENGTH = 255
#: a task's command line (exec_file, then its parameter line) is one argument of a shell, and
#: Linux caps one argument at 128 KiB: a longer one could never start (docs/compat.md)
MAX_PARAM_LINE = 64 * 1024
MAX_STRING_FIELD = 32 * 1024
_WALLTIME = re.compile(r"\d+(:\d{1,2}){0,2}")
_ENV_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


# ------------------------------------------------------------------ parsing / validation
def _show(v: Any, limit: int = 60) -> str:
    """A value quoted in an error message: JSON, shortened."""
    try:
        text = json.dumps(v, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(v).__name__)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_bool_text(field: str, v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower()
    raise ParseError(f"Field '{field}'{where} must be true or false, got {_show(v)}")


def _check_field(field: str, v: Any, where: str) -> Any:
    """Validate and normalise one per-cluster field; returns the stored form."""
    if field in STRING_FIELDS:
        if not isinstance(v, str):
            raise ParseError(f"Field '{field}'{where} must be a string, got {_show(v)}")
        if field == "exec_file" and not v.strip():
            raise ParseError(f"Field 'exec_file'{where} is empty")
        if "\0" in v:
            raise ParseError(f"Field '{field}'{where} contains a NUL character")
        if len(v) > MAX_STRING_FIELD // 4 and len(v.encode()) > MAX_STRING_FIELD:
            raise ParseError(f"Field '{field}'{where} is longer than {MAX_STRING_FIELD} bytes")
        return v
    if field in WALLTIME_FIELDS:
        if _is_int(v) and v > 0:
            v = f"{v // 3600:02d}:{v % 3600 // 60:02d}:{v % 60:02d}"
        if not isinstance(v, str) or not _WALLTIME.fullmatch(v.strip()):
            raise ParseError(f"Field '{field}'{where} must be a walltime like \"HH:MM:SS\", got {_show(v)}")
        return v.strip()
    if field in BOOL_FIELDS:
        return _as_bool_text(field, v, where)
    if field in INT_FIELDS:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        lo = 1 if field == "max_jobs" else 0
        if not _is_int(v) or v < lo or v > 2**31 - 1:
            raise ParseError(f"Field '{field}'{where} must be an integer >= {lo}, got {_show(v)}")
        return v
    if field in LINES_FIELDS:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ParseError(f"Field '{field}'{where} must be an array of strings (shell lines)")
        return list(v)
    if field == "container":
        return containers.check_block(v, where)
    if field == "type":
        if not isinstance(v, str) or v not in CAMPAIGN_TYPES:
            raise ParseError(f"Field 'type'{where} must be one of {', '.join(CAMPAIGN_TYPES)}, got {_show(v)}")
        return v
    return v


def parse_jdl(text_or_dict: Any) -> dict[str, Any]:
    """Parse and validate a JDL (JSON text, bytes or an already decoded object).

    Returns a new dict with lower-cased top-level keys and validated fields; raises
    ParseError with one message naming the problem (and, from a text, its line)."""
    try:
        return _parse_jdl(text_or_dict)
    except ParseError as e:
        line = _field_line(text_or_dict, str(e)) if isinstance(text_or_dict, str) else None
        if line is None:
            raise
        raise ParseError(f"line {line}: {e}") from None


def _field_line(text: str, message: str) -> int | None:
    """The line of the JDL text where the field a message names is written."""
    m = re.match(r"(?:Field|Unknown field) '([^']+)'", message)
    if not m:
        return None
    found = re.search(r'"' + re.escape(m.group(1)) + r'"\s*:', text, re.I)
    return text.count("\n", 0, found.start()) + 1 if found else None


def _parse_jdl(text_or_dict: Any) -> dict[str, Any]:
    if isinstance(text_or_dict, (bytes, bytearray)):
        try:
            text_or_dict = text_or_dict.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ParseError(f"JDL badly defined: not UTF-8 ({e.reason} at byte {e.start})") from None
    if isinstance(text_or_dict, str):
        try:
            data = json.loads(text_or_dict)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ParseError(f"JDL badly defined: {e}") from None
    else:
        data = text_or_dict
    if not isinstance(data, dict):
        raise ParseError(f"JDL badly defined: expected a JSON object, got {type(data).__name__}")
    jdl: dict[str, Any] = {}
    for k, v in data.items():
        if not isinstance(k, str):
            raise ParseError(f"JDL badly defined: key {k!r} is not a string")
        jdl[k.lower()] = v

    for field in ("name", "clusters"):
        v = jdl.get(field)
        if v is None or v == "" or v is False:
            raise ParseError(f"JDL file does not contain mandatory field '{field}'")
    if not isinstance(jdl["name"], str) or not jdl["name"].strip():
        raise ParseError("Field 'name' must be a non-empty string")
    if len(jdl["name"]) > 255:
        raise ParseError("Field 'name' is longer than 255 characters")
    clusters = jdl["clusters"]
    if not isinstance(clusters, dict):
        raise ParseError("Field 'clusters' must be an object {\"<cluster name>\": {...}}")
    if not clusters:
        raise ParseError('You must define at least one cluster in the "clusters" field')

    jobs_type = jdl.get("jobs_type", "normal")
    if not isinstance(jobs_type, str) or jobs_type.lower() not in JOBS_TYPES:
        raise ParseError(f"Field 'jobs_type' must be one of {', '.join(JOBS_TYPES)}, got {_show(jobs_type)}")
    jdl["jobs_type"] = jobs_type.lower()

    # top-level per-cluster defaults
    for field in CLUSTER_FIELDS:
        if field in jdl and jdl[field] is not None:
            jdl[field] = _check_field(field, jdl[field], "")
        elif field in jdl:
            del jdl[field]
    checked: dict[str, dict[str, Any]] = {}
    for cname, block in clusters.items():
        if not isinstance(cname, str) or not cname.strip():
            raise ParseError("Field 'clusters' contains a cluster with an empty name")
        if block is None:
            block = {}
        if not isinstance(block, dict):
            raise ParseError(f"Cluster '{cname}' must be an object, got {_show(block)}")
        cb: dict[str, Any] = {}
        for k, v in block.items():
            if not isinstance(k, str):
                raise ParseError(f"Cluster '{cname}': key {_show(k)} is not a string")
            key = k.lower()
            if v is None:
                continue
            cb[key] = _check_field(key, v, f" of cluster '{cname}'") if key in CLUSTER_FIELDS else v
        if "exec_file" not in cb and "exec_file" not in jdl:
            raise ParseError(f"Cluster '{cname}' does not have mandatory field 'exec_file'")
        checked[cname] = cb
    jdl["clusters"] = checked

    _check_sizes(jdl)
    _check_params_fields(jdl)
    return jdl


#: an unknown field (kept for admission rules and stored with the campaign) and the whole
#: JDL without its parameters are bounded: it is stored and shown with every campaign
MAX_UNKNOWN_FIELD = 64 * 1024
MAX_JDL_WITHOUT_PARAMS = 1024 * 1024


def _size(v: Any) -> int:
    return len(json.dumps(v, ensure_ascii=False))


def _check_sizes(jdl: dict[str, Any]) -> None:
    known = set(GLOBAL_FIELDS) | set(CLUSTER_FIELDS)
    blocks = [("", jdl)] + [(f" of cluster '{c}'", b) for c, b in jdl["clusters"].items()]
    for where, block in blocks:
        for k, v in block.items():
            if k in known:
                continue
            # Unknown fields are kept (admission rules may read them), but a typo of a known
            # one (`nb_job`) would silently be ignored: refused, naming the field meant.
            import difflib

            close = difflib.get_close_matches(k, known, n=1, cutoff=0.8)
            if close:
                raise ParseError(f"Unknown field '{k}'{where}: did you mean '{close[0]}'?")
            if _size(v) > MAX_UNKNOWN_FIELD:
                raise ParseError(f"Field '{k}'{where} is unknown to CiGri and larger than {MAX_UNKNOWN_FIELD} bytes")
    rest = {k: v for k, v in jdl.items() if k != "params"}
    if _size(rest) > MAX_JDL_WITHOUT_PARAMS:
        raise ParseError(f"The JDL without its params is larger than {MAX_JDL_WITHOUT_PARAMS} bytes")


def _check_params_fields(jdl: dict[str, Any]) -> None:
    for field in ("params", "nb_jobs", "param_file"):
        if field in jdl and jdl[field] is None:
            del jdl[field]
    if "params" in jdl:
        params = jdl["params"]
        if not isinstance(params, list):
            raise ParseError("Field 'params' must be an array of strings")
        out = []
        for i, p in enumerate(params):
            if _is_int(p) or (isinstance(p, float) and math.isfinite(p)):
                p = str(p)
            if not isinstance(p, str):
                raise ParseError(f"Field 'params': element {i} must be a string, got {_show(p)}")
            out.append(p)
        jdl["params"] = out
    if "nb_jobs" in jdl:
        n = jdl["nb_jobs"]
        if isinstance(n, str) and n.strip().isdigit():
            n = int(n.strip())
        if not _is_int(n) or n < 0:
            raise ParseError(f"Field 'nb_jobs' must be a non-negative integer, got {_show(n)}")
        if n > MAX_NB_JOBS:
            raise ParseError(f"Field 'nb_jobs' is too large ({n} > {MAX_NB_JOBS})")
        jdl["nb_jobs"] = n
    if "param_file" in jdl:
        pf = jdl["param_file"]
        if not isinstance(pf, str) or not pf.strip():
            raise ParseError("Field 'param_file' must be a non-empty path string")
    if not any(f in jdl for f in ("params", "nb_jobs", "param_file")) and jdl["jobs_type"] != "desktop_computing":
        raise ParseError("No parameters for your campaign are defined. You must define param_file or nb_jobs or "
                         "params or have \"jobs_type\": \"desktop_computing\"")


# ------------------------------------------------------------------ expansion
def user_home(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        raise ParseError(f"Unknown user '{user}': cannot resolve '~' or '{{HOME}}'") from None


def _expand_env(path: str) -> str:
    def sub(m: re.Match[str]) -> str:
        var = m.group(1) or m.group(2)
        if var not in os.environ:
            raise ParseError(f"Field 'param_file': environment variable ${var} is not set")
        return os.environ[var]

    return _ENV_VAR.sub(sub, path)


def resolve_param_file(path: str, user: str) -> str:
    """Macros of param_file: ~ and {HOME}, $VARS, absolute path, readable."""
    path = path.strip()
    if path.startswith("~") or "{HOME}" in path:
        home = user_home(user)
        if path.startswith("~"):
            path = home + path[1:]
        path = path.replace("{HOME}", home)
    path = _expand_env(path)
    if not os.path.isabs(path):
        try:
            base = pwd.getpwnam(user).pw_dir
        except KeyError:
            base = os.getcwd()
        path = os.path.join(base, path)
    path = os.path.normpath(path)
    try:
        st = os.stat(path)
    except OSError:
        raise ParseError(f"Parameter file '{path}' is not readable") from None
    if not stat.S_ISREG(st.st_mode):
        raise ParseError(f"Parameter file '{path}' is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError:
        raise ParseError(f"Parameter file '{path}' is not readable") from None
    # The API reads the file with its own identity: only give a user what they could read.
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = None
    if os.geteuid() == 0 and st.st_uid != uid and not st.st_mode & stat.S_IROTH:
        raise ParseError(f"Parameter file '{path}' is not readable by user '{user}'")
    return path


def _macro_exec(v: str, campaign_macro: bool) -> str:
    v = v.replace("{HOME}", "$HOME").replace("~", "$HOME")
    if campaign_macro:
        v = v.replace("{CAMPAIGN_ID}", "\\$CIGRI_CAMPAIGN_ID")
    return v


def _macro_line(v: str) -> str:
    return (v.replace("{CAMPAIGN_ID}", "\\$CIGRI_CAMPAIGN_ID").replace("{OAR_JOB_ID}", "\\$OAR_JOB_ID")
            .replace("{HOME}", "\\$HOME").replace("~", "\\$HOME"))


def defaults(conf: Conf) -> dict[str, Any]:
    """Per-cluster defaults."""
    for var in ("DEFAULT_JOB_RESOURCES", "DEFAULT_JOB_WALLTIME"):
        if not conf.get(var):
            raise NotFound(f"Mandatory option '{var}' not found in configuration file")
    return {"type": "best-effort", "exec_directory": "$HOME", "output_gathering_method": "None",
            "dimensional_grouping": "false", "temporal_grouping": "false", "checkpointing_type": "None",
            "test_mode": "false", "properties": "", "project": "", "cluster_job_type": "",
            "resources": conf.get("DEFAULT_JOB_RESOURCES"), "walltime": conf.get("DEFAULT_JOB_WALLTIME"),
            "max_resubmit": int(conf.get("DEFAULT_MAX_RESUBMIT"))}


def expand_jdl(jdl: Any, conf: Conf | None = None, user: str = "", known_clusters: dict[str, int] | None = None
               ) -> dict[str, Any]:
    """Defaults, expansion of top-level fields into clusters, macros, parameter source.

    `known_clusters` (name -> id) only serves to check that at least one cluster is
    usable (None = don't check). The parameter list is not materialised: `nb_jobs`
    and a resolved absolute `param_file` stay in the result; explicit `params` win."""
    jdl = parse_jdl(jdl)  # idempotent: an already parsed JDL passes unchanged
    conf = conf or get_conf()
    dflt = defaults(conf)
    out: dict[str, Any] = {"name": jdl["name"], "jobs_type": jdl["jobs_type"]}
    top = {k: v for k, v in jdl.items() if k not in GLOBAL_FIELDS and k != "container"}
    clusters: dict[str, dict[str, Any]] = {}
    for cname, block in jdl["clusters"].items():
        cb = dict(block)
        container = containers.merge(jdl.get("container"), cb.pop("container", None))
        if container:
            cb["container"] = containers.finish_block(container, cname)
        for k, v in top.items():
            cb.setdefault(k, v)
        for k, v in dflt.items():
            cb.setdefault(k, v)
        if cb.get("test_mode") == "true":
            cb["max_jobs"] = 1
        cb["exec_file"] = _macro_exec(cb["exec_file"], True)
        cb["exec_directory"] = _macro_exec(cb["exec_directory"], False)
        for f in LINES_FIELDS:
            if f in cb:
                cb[f] = [_macro_line(x) for x in cb[f]]
        clusters[cname] = cb
    out["clusters"] = clusters
    if known_clusters is not None and not any(c in known_clusters for c in clusters):
        raise ParseError("No clusters usable for the campaign (unknown: " + ", ".join(sorted(clusters)) + ")")
    if "params" in jdl:
        out["params"] = jdl["params"]
    elif "nb_jobs" in jdl:
        out["nb_jobs"] = jdl["nb_jobs"]
    elif "param_file" in jdl:
        out["param_file"] = resolve_param_file(jdl["param_file"], user)
    else:
        out["params"] = []
    return out


# ------------------------------------------------------------------ parameters
def check_param_line(line: str, where: str) -> str:
    """Name of a parameter line (first token), or ParseError naming `where`."""
    if "\0" in line:
        raise ParseError(f"Parameter {where} contains a NUL character")
    if "\n" in line:
        raise ParseError(f"Parameter {where} contains a line break")
    name = line.split(None, 1)[0] if line.strip() else ""
    if len(name) > MAX_NAME_LENGTH:
        raise ParseError(f"Parameter name at {where} is longer than {MAX_NAME_LENGTH} characters")
    if len(line) > MAX_PARAM_LINE // 4 and len(line.encode()) > MAX_PARAM_LINE:
        raise ParseError(f"Parameter {where} is longer than {MAX_PARAM_LINE} bytes (a task's command line "
                         "must fit in one shell argument)")
    return name


def iter_param_lines(jdl: dict[str, Any], user: str = "") -> Iterator[str]:
    """The parameter lines of an expanded JDL, streamed (stripped, CiGri3-style)."""
    if "params" in jdl and jdl["params"] is not None:
        yield from (p.strip() if isinstance(p, str) else str(p) for p in jdl["params"])
    elif "nb_jobs" in jdl:
        yield from map(str, range(int(jdl["nb_jobs"])))
    elif "param_file" in jdl:
        path = jdl["param_file"]
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in finally, generator
        except OSError:
            raise ParseError(f"Parameter file '{path}' is not readable") from None
        try:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ParseError(f"Parameter file '{path}', line {n}: not valid UTF-8") from None
                yield line.strip()
        finally:
            f.close()


def iter_named_params(jdl: dict[str, Any], user: str = "") -> Iterator[tuple[str, str]]:
    """(name, line) of every parameter, validated; errors name the element or line number.

    The hot path of a 1M-line submission: kept to a strip and a split per line."""
    if "params" in jdl and jdl["params"] is not None:
        for n, p in enumerate(jdl["params"]):
            if not isinstance(p, str):
                raise ParseError(f"Field 'params': element {n} must be a string")
            line = p.strip()
            yield check_param_line(line, f"element {n} of 'params'"), line
    elif "nb_jobs" in jdl:
        for s in map(str, range(int(jdl["nb_jobs"]))):
            yield s, s
    elif "param_file" in jdl:
        path = jdl["param_file"]
        n = 0
        try:
            with open(path, encoding="utf-8", newline="\n") as f:
                for n, raw in enumerate(f, 1):  # noqa: B007 - n used in the error messages
                    line = raw.strip()
                    if not line:
                        yield "", ""
                        continue
                    name = line.split(None, 1)[0]
                    if len(name) > MAX_NAME_LENGTH or "\0" in line or len(line) > MAX_PARAM_LINE // 4:
                        check_param_line(line, f"line {n} of parameter file '{path}'")
                    yield name, line
        except UnicodeDecodeError:
            raise ParseError(f"Parameter file '{path}', line {_bad_utf8_line(path)}: not valid UTF-8") from None
        except OSError:
            raise ParseError(f"Parameter file '{path}' is not readable") from None


def _bad_utf8_line(path: str) -> int:
    """Line number of the first invalid UTF-8 line (error path: text mode decodes by blocks)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 0


def param_source(jdl: dict[str, Any]) -> str:
    if "param_file" in jdl and "params" not in jdl:
        return f"parameter file '{jdl['param_file']}'"
    return "params"


# ------------------------------------------------------------------ properties / runner options
def _prop_text(v: Any) -> str | None:
    if v is None or v is False:
        return None
    if v is True:
        return "true"
    if isinstance(v, dict):
        return containers.to_property(v)
    if isinstance(v, list):
        return "\n".join(str(x) for x in v)
    return str(v)


def cluster_properties(expanded: dict[str, Any], cluster_name: str) -> dict[str, str]:
    """campaign_properties rows of one cluster of an expanded JDL."""
    block = expanded["clusters"][cluster_name]
    out: dict[str, str] = {}
    for name in PROPERTY_NAMES:
        if name in block:
            text = _prop_text(block[name])
            if text is not None:
                out[name] = text
    return out


def stored_jdl(expanded: dict[str, Any], nb_params: int) -> dict[str, Any]:
    """The JDL as stored in campaigns.jdl: params are in the parameters table, not here
    (a 1M-line campaign must not rewrite a 1M-element JSON array)."""
    out = {k: v for k, v in expanded.items() if k not in ("params", "nb_jobs", "param_file")}
    out["params"] = []
    out["params_count"] = nb_params
    if "param_file" in expanded:
        out["param_file_source"] = expanded["param_file"]
    return out
