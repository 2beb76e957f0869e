"""Containers: the JDL `container` block, and the command that runs a task inside an image.

The same campaign runs on a laptop, on OAR and on Slurm: the block names an image and, per
cluster, the engine that runs it; CiGri writes the engine's command line, the same for every
batch system (OAR and Slurm arrays, temporal grouping, local mode). What a task sees inside,
whatever the engine (docs/containers.md):
- the image's files; its working directory (exec_directory) bound at the same path and used as
  cwd; the block's binds;
- the image's environment, CiGri's and the batch system's variables (CIGRI_*, OAR_*, SLURM_*)
  and the block's `env`, but not the rest of the node's environment (the node's PATH or
  LD_LIBRARY_PATH would break the image's programs);
- its exit status, stdout and stderr are the task's, unchanged.

The command is a short bash program, sent base64-encoded so that no shell on the way (OAR 2.5's
API evaluates commands once more) expands anything. Before starting the engine it checks what
the engine needs on the node; a failure is named on stderr by one marker line
(`cigri: container error [cause]: ...`) and exit status 125, which `diagnose` turns into the
task's CONTAINER_ERROR event telling the user what to fix."""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cigri.errors import ParseError

#: engine name in the JDL -> the program it runs.
BINARIES = {"apptainer": "apptainer", "singularity": "singularity", "podman": "podman", "docker": "docker",
            "charliecloud": "ch-run", "bwrap": "bwrap"}
ENGINES = tuple(BINARIES)
FIELDS = ("engine", "image", "bind", "env", "options")
#: exit status of a task whose container could not be started (podman's and docker's too).
ERROR_STATUS = 125
#: the node environment passed into every container (bash ${!PREFIX@} expansions).
PASSED_PREFIXES = ("CIGRI_", "OAR_", "SLURM_")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MARKER = re.compile(r"^cigri: container error \[([a-z-]+)\]: (.*)$", re.M)
#: a path as the JDL may write it: absolute, home-relative, or starting with a variable.
_PATHLIKE = ("/", "~", "{HOME}", "$")

#: what the user should do, per cause named by the marker line.
ADVICE = {
    "engine-missing": "Install the engine on this cluster's nodes (on the PATH of jobs), or choose in the "
                      "JDL's container block an engine this cluster has.",
    "image-not-found": "Put the image where every node of this cluster sees it (a shared file system), or "
                       "prepare it in this cluster's prologue, or fix 'image' in the container block.",
    "bind-source-missing": "Create this directory on the cluster, or fix 'bind' in the container block.",
    "exec-file-missing": "In a container, exec_file is a path inside the image: fix exec_file or the image.",
    "mount-point": "Create this directory in the image, or use a newer engine that can create mount points.",
    "workdir": "Create the working directory (exec_directory) on the cluster.",
    "bad-path": "Paths given to this engine cannot contain ':' or ','.",
    "engine-failed": "The engine could not start the container: its own message is in the lines above.",
}


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    readonly: bool = False


# ------------------------------------------------------------------ JDL validation
def _show(v: Any) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = type(v).__name__
    return text if len(text) <= 60 else text[:60] + "..."


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ParseError(f"{what} must be a non-empty string, got {_show(v)}")
    if "\0" in v or "\n" in v:
        raise ParseError(f"{what} contains a NUL character or a line break")
    return v.strip()


def parse_bind(entry: str, what: str = "bind") -> Bind:
    """`src`, `src:ro`, `src:dst` or `src:dst:ro|rw`; paths absolute (or ~, {HOME}, $VAR)."""
    parts = entry.split(":")
    mode = "rw"
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        mode = parts.pop()
    if not 1 <= len(parts) <= 2 or "" in parts:
        raise ParseError(f"{what} {_show(entry)} is not \"src\", \"src:dst\" or \"src:dst:ro\"")
    if "," in entry:
        raise ParseError(f"{what} {_show(entry)} contains a comma: give one bind per array element")
    for p in parts:
        if not p.startswith(_PATHLIKE):
            raise ParseError(f"{what} {_show(entry)}: path {_show(p)} is not absolute")
    return Bind(parts[0], parts[-1], mode == "ro")


def check_block(value: Any, where: str = "") -> dict[str, Any] | bool:
    """Validate a `container` block as written (top-level or one cluster's; both may be
    partial): returns its normalised fields, or False for `"container": false` (no container)."""
    field = f"Field 'container'{where}"
    if value is False:
        return False
    if not isinstance(value, dict):
        raise ParseError(f"{field} must be an object {{\"engine\": ..., \"image\": ...}} or false, got {_show(value)}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = k.lower() if isinstance(k, str) else k
        if key not in FIELDS:
            raise ParseError(f"{field}: unknown field {_show(k)} (known: {', '.join(FIELDS)})")
        if v is None:
            continue
        if key == "engine":
            if not isinstance(v, str) or v.strip().lower() not in ENGINES:
                raise ParseError(f"{field}: unknown engine {_show(v)} (known: {', '.join(ENGINES)})")
            out[key] = v.strip().lower()
        elif key == "image":
            out[key] = _text(v, f"{field}: 'image'")
        elif key == "bind":
            binds = [v] if isinstance(v, str) else v
            if not isinstance(binds, list):
                raise ParseError(f"{field}: 'bind' must be an array of \"src[:dst[:ro]]\" strings")
            for i, b in enumerate(binds):
                parse_bind(_text(b, f"{field}: bind {i}"), f"{field}: bind")
            out[key] = [b.strip() for b in binds]
        elif key == "env":
            if not isinstance(v, dict):
                raise ParseError(f"{field}: 'env' must be an object {{\"NAME\": \"value\"}}")
            env: dict[str, str] = {}
            for name, val in v.items():
                if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                    raise ParseError(f"{field}: 'env' has an invalid variable name {_show(name)}")
                if isinstance(val, bool):
                    val = "true" if val else "false"
                if isinstance(val, int | float):
                    val = str(val)
                if not isinstance(val, str) or "\0" in val:
                    raise ParseError(f"{field}: 'env' value of {name} must be a string, got {_show(val)}")
                env[name] = val
            out[key] = env
        else:  # options
            if not isinstance(v, list) or not all(isinstance(o, str) for o in v):
                raise ParseError(f"{field}: 'options' must be an array of strings, e.g. [\"--nv\"]")
            if any("\0" in o or "\n" in o for o in v):
                raise ParseError(f"{field}: 'options' contains a NUL character or a line break")
            out[key] = list(v)
    return out


def merge(top: Any, cluster: Any) -> dict[str, Any] | None:
    """Field-level merge: a field of the cluster's block replaces the same top-level field;
    a cluster's `false` means no container there."""
    if cluster is False:
        return None
    if not top:
        return dict(cluster) if cluster else None
    return dict(top) | dict(cluster or {})


def _macro(v: str) -> str:
    """`~` and {HOME} are the user's home, {CAMPAIGN_ID} the campaign's id (expanded on the node)."""
    if v == "~" or v.startswith("~/"):
        v = "$HOME" + v[1:]
    return v.replace("{HOME}", "${HOME}").replace("{CAMPAIGN_ID}", "${CIGRI_CAMPAIGN_ID}")


def _is_path(image: str) -> bool:
    return image.startswith(_PATHLIKE) or image.startswith(".")


def finish_block(block: dict[str, Any], cluster: str) -> dict[str, Any]:
    """A cluster's merged block, complete and with its macros applied (what the runner uses)."""
    where = f"Cluster '{cluster}': the container block"
    if "engine" not in block:
        raise ParseError(f"{where} has no 'engine' (one of {', '.join(ENGINES)})")
    if "image" not in block:
        raise ParseError(f"{where} has no 'image'")
    out = dict(block)
    out["image"] = _macro(block["image"])
    if block["engine"] == "docker" and _is_path(block["image"]):
        raise ParseError(f"{where}: docker runs images by name, not a directory or file "
                         f"({_show(block['image'])}): 'docker load' it, or use podman")
    if block["engine"] in ("bwrap", "charliecloud") and not _is_path(block["image"]):
        raise ParseError(f"{where}: {block['engine']} needs the path of an image directory, got "
                         f"{_show(block['image'])}")
    if "bind" in block:
        out["bind"] = []
        for b in block["bind"]:
            p = parse_bind(b)
            out["bind"].append(f"{_macro(p.src)}:{_macro(p.dst)}" + (":ro" if p.readonly else ""))
    if "env" in block:
        out["env"] = {k: _macro(v) for k, v in block["env"].items()}
    if "options" in block:
        out["options"] = [_macro(o) for o in block["options"]]
    return out


def parse_engine_list(text: str | None) -> list[str] | None:
    """An admin's list of a cluster's engines ("apptainer,charliecloud"); None = not declared."""
    if text is None:
        return None
    names = [n.strip().lower() for n in re.split(r"[,\s]+", text) if n.strip()]
    for n in names:
        if n not in ENGINES:
            raise ParseError(f"Unknown container engine {_show(n)} (known: {', '.join(ENGINES)})")
    return names


def check_engine_offered(cluster: str, block: Mapping[str, Any] | None, offered: str | None) -> None:
    """Refuse a campaign asking a cluster for an engine its admin did not declare."""
    if not block:
        return
    engines = parse_engine_list(offered)
    if engines is None or block["engine"] in engines:
        return
    has = (f"offers only the container engine{'s' if len(engines) > 1 else ''} {', '.join(engines)}"
           if engines else "offers no container engine")
    raise ParseError(f"Cluster '{cluster}' {has}, but the campaign asks for '{block['engine']}' there")


def from_property(text: str | None) -> dict[str, Any] | None:
    """The block stored in campaign_properties (JSON), or None."""
    if not text:
        return None
    try:
        block = json.loads(text)
    except ValueError:
        return None
    return block if isinstance(block, dict) and block.get("engine") in ENGINES else None


def to_property(block: Mapping[str, Any]) -> str:
    return json.dumps(dict(block), sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------ the command
_DQ_TOKEN = re.compile(r"\\\$|\$\{[A-Za-z_]\w*\}|\$[A-Za-z_]\w*|[\\\"`$]")


def _dq(text: str) -> str:
    """`text` in double quotes for bash: `$NAME`/`${NAME}` expand on the node, nothing else does
    (no command substitution, no backquotes); `\\$` is a literal `$`."""
    def sub(m: re.Match[str]) -> str:
        t = m.group(0)
        if t == "\\$" or t == "$":
            return "\\$"
        if t.startswith("$"):
            return t
        return "\\" + t
    return '"' + _DQ_TOKEN.sub(sub, text) + '"'


def _unescape(s: str) -> str:
    """The JDL escapes `$` for OAR 2.5's API shell; inside CiGri's script it must not be."""
    return s.replace("\\$", "$")


_PASS = " ".join(f"${{!{p}@}}" for p in PASSED_PREFIXES)


def _exec_check(exec_file: str) -> list[str]:
    """For a directory image: is exec_file's program in it? (only a plain absolute path)."""
    words = exec_file.split()
    first = words[0] if words else ""
    if not first.startswith("/") or any(c in first for c in "$`\\\"'*?[~"):
        return []
    q = shlex.quote(first)
    return [f'[ ! -d "$img" ] || [ -e "$img"{q} ] || [ -L "$img"{q} ] || '
            f'{{ cigri_cerr exec-file-missing "exec_file {first} is not in the image $img"; exit 125; }}']


def _bash_lines(block: Mapping[str, Any], exec_file: str, exec_directory: str | None) -> list[str]:
    """The body of the cigri_task function (run in a subshell: `exit` ends the task only)."""
    engine = block["engine"]
    binary = BINARIES[engine]
    image = str(block["image"])
    path_image = _is_path(image)
    binds = [parse_bind(b) for b in block.get("bind", [])]
    env: dict[str, str] = dict(block.get("env", {}))
    options = " ".join(_dq(o) for o in block.get("options", []))
    run = _unescape(exec_file).strip() + ' "$@"'
    colon_syntax = engine != "bwrap"
    L: list[str] = []
    if exec_directory:
        L.append(f"wd={_dq(_unescape(exec_directory))}")
        L.append('cd -- "$wd" 2>/dev/null || { cigri_cerr workdir "cannot enter the working directory $wd"; '
                 "exit 125; }")
    L.append("wd=$PWD")
    L.append(f"command -v {binary} >/dev/null 2>&1 || {{ cigri_cerr engine-missing "
             f'"{binary} is not installed on this node (or not in the PATH of jobs)"; exit 125; }}')
    L.append(f"img={_dq(image)}")
    if path_image or (engine in ("apptainer", "singularity") and "://" not in image):
        L.append('[ -e "$img" ] || { cigri_cerr image-not-found "image $img does not exist"; exit 125; }')
        L += _exec_check(exec_file)
    bad = "*[:,]*" if engine in ("apptainer", "singularity") else "*:*"
    if colon_syntax:
        L.append(f'cigri_path() {{ case $1 in {bad}) cigri_cerr bad-path "{binary} cannot mount $1"; '
                 "exit 125;; esac; }")
        L.append('cigri_path "$wd"')
    L.append("a=()")
    # binds: sources checked, then kept in s1.. / d1..
    for i, b in enumerate(binds):
        L.append(f"s{i}={_dq(b.src)}; d{i}={_dq(b.dst)}")
        L.append(f'[ -e "$s{i}" ] || {{ cigri_cerr bind-source-missing "bind source $s{i} does not exist"; '
                 "exit 125; }")
        if colon_syntax:
            L.append(f'cigri_path "$s{i}"; cigri_path "$d{i}"')
    if engine in ("apptainer", "singularity"):
        prefix = "APPTAINERENV_" if engine == "apptainer" else "SINGULARITYENV_"
        L.append(f'for v in {_PASS}; do export "{prefix}$v=${{!v}}"; done')
        L += [f"export {prefix}{k}={_dq(v)}" for k, v in env.items()]
        L.append('a+=(exec --cleanenv --no-home --bind "$wd" --pwd "$wd")')
        for i, b in enumerate(binds):
            L.append(f'a+=(--bind "$s{i}:$d{i}{":ro" if b.readonly else ""}")')
        L.append(f'exec {binary} "${{a[@]}}" {options} "$img" {run}')
    elif engine in ("podman", "docker"):
        if engine == "podman":
            L.append('a+=(--log-level=error run --rm --init --network=host -v "$wd:$wd" -w "$wd")')
            L.append('[ "$EUID" = 0 ] || a+=(--userns=keep-id)')
        else:
            L.append('a+=(run --rm --init --network=host -u "$EUID:$(id -g)" -v "$wd:$wd" -w "$wd")')
        L.append(f'for v in HOME USER LOGNAME {_PASS}; do a+=(-e "$v"); done')
        L += [f"a+=(-e {_dq(k + '=' + v)})" for k, v in env.items()]
        for i, b in enumerate(binds):
            L.append(f'a+=(-v "$s{i}:$d{i}{":ro" if b.readonly else ""}")')
        target = '--rootfs "$img:O"' if path_image else '"$img"'
        if path_image:
            L.append('cigri_path "$img"')
        L.append(f'{binary} "${{a[@]}}" {options} {target} {run}')
        L.append("rc=$?")
        if not path_image:
            exists = "podman image exists" if engine == "podman" else "docker image inspect"
            L.append(f'if [ $rc = 125 ] && ! {exists} "$img" >/dev/null 2>&1; then cigri_cerr image-not-found '
                     f'"image $img is not in the {engine} image store of $(id -un) on this node"; '
                     'elif [ $rc = 125 ]; then cigri_cerr engine-failed "' + engine + ' exited with status 125"; fi')
        else:
            L.append('[ $rc != 125 ] || cigri_cerr engine-failed "' + engine + ' exited with status 125"')
        L.append("exit $rc")
    elif engine == "charliecloud":
        L += _charliecloud(binds, env)
        L.append(f'exec ch-run "${{a[@]}}" {options} "$img" -- {run}')
    else:
        L += _bwrap(binds, env)
        L.append(f'exec bwrap "${{a[@]}}" {options} {run}')
    return L


def _charliecloud(binds: list[Bind], env: dict[str, str]) -> list[str]:
    """ch-run mounts only on directories the image has (before 0.37 and --write-fake); /tmp is
    the node's, and --home shows $HOME at /home/$USER: a same-path bind uses what works."""
    L = ['export USER="${USER:-$(id -un)}"',
         "a+=(--unset-env='*')",
         '[ ! -f "$img/ch/environment" ] || a+=(--set-env)',
         f'a+=(--set-env=PATH={DEFAULT_PATH} --set-env="HOME=$HOME" --set-env="USER=$USER" '
         '--set-env="LOGNAME=$USER")',
         f'for v in {_PASS}; do a+=(--set-env="$v=${{!v}}"); done']
    L += [f"a+=(--set-env={_dq(k + '=' + v)})" for k, v in env.items()]
    L += ["wf=; hm=",
          "cigri_mnt() {",
          '  [ ! -d "$img$1" ] || return 0',
          '  case $1/ in /tmp/*) [ ! -d "$1" ] || return 0;; esac',
          '  [ -n "$wf" ] || { wf=0; ! ch-run --help 2>&1 | grep -q -- --write-fake || { wf=1; a+=(--write-fake); }; }',
          '  [ "$wf" = 0 ] || return 0',
          '  case $1/ in "$HOME"/*) if [ "$HOME" = "/home/$USER" ] && [ -d "$img/home" ]; then',
          '    [ -n "$hm" ] || { hm=1; a+=(--home); }; return 2; fi;; esac',
          '  cigri_cerr mount-point "the image has no directory $1 to mount on, and this ch-run cannot create '
          'one (charliecloud >= 0.37 can)"; exit 125',
          "}",
          'cigri_mnt "$wd"; [ $? = 2 ] || a+=(-b "$wd")',
          'a+=(-c "$wd")']
    for i, _ in enumerate(binds):
        L.append(f'cigri_mnt "$d{i}"; [ $? = 2 ] && [ "$s{i}" = "$d{i}" ] || a+=(-b "$s{i}:$d{i}")')
    return L


def _bwrap(binds: list[Bind], env: dict[str, str]) -> list[str]:
    """bwrap cannot create a mount point in a read-only image: the root is bwrap's tmpfs, where
    the image's entries are bound one by one, except along the path of each bind destination,
    where directories are made in the tmpfs and their own entries bound (same-path binds, an
    unchanged image, no overlayfs needed: bwrap 0.8 has none)."""
    L = ["a+=(--unshare-all --share-net --die-with-parent --clearenv)",
         f'a+=(--setenv PATH {DEFAULT_PATH} --setenv HOME "$HOME" --setenv USER "${{USER:-$(id -un)}}" '
         '--setenv LOGNAME "${USER:-$(id -un)}")',
         f'for v in {_PASS}; do a+=(--setenv "$v" "${{!v}}"); done']
    L += [f"a+=(--setenv {k} {_dq(v)})" for k, v in env.items()]
    L.append('[ -d "$img" ] || { cigri_cerr image-not-found "bwrap needs an image directory (a root file system), '
             'and $img is not one"; exit 125; }')
    L.append('D=("$wd"' + "".join(f' "$d{i}"' for i in range(len(binds))) + ")")
    L += ["cigri_on() { local d; for d in \"${D[@]}\"; do case $d/ in \"$1\"/*) return 0;; esac; done; return 1; }",
          "cigri_isd() { local d; for d in \"${D[@]}\"; do [ \"$d\" != \"$1\" ] || return 0; done; return 1; }",
          "cigri_carve() {",
          "  local e q",
          '  for e in "$img$1"/* "$img$1"/.[!.]* "$img$1"/..?*; do',
          '    [ -e "$e" ] || [ -L "$e" ] || continue',
          '    q=$1/${e##*/}',
          '    if cigri_on "$q"; then',
          '      if ! cigri_isd "$q" && [ -d "$e" ] && [ ! -L "$e" ]; then a+=(--dir "$q"); cigri_carve "$q"; fi',
          "      continue",
          "    fi",
          '    if [ -L "$e" ]; then a+=(--symlink "$(readlink "$e")" "$q"); else a+=(--ro-bind "$e" "$q"); fi',
          "  done",
          "}",
          'cigri_carve ""',
          'a+=(--bind "$wd" "$wd")']
    for i, b in enumerate(binds):
        L.append(f'a+=(--{"ro-bind" if b.readonly else "bind"} "$s{i}" "$d{i}")')
    L += ['a+=(--proc /proc --dev /dev)',
          'cigri_on /tmp || a+=(--tmpfs /tmp)',
          'a+=(--chdir "$wd")']
    return L


def task_function(block: Mapping[str, Any], exec_file: str, exec_directory: str | None = None,
                  name: str = "cigri_task", subshell: bool = True) -> str:
    """bash defining `name`: run exec_file with the function's arguments in the container. Its
    body runs in a subshell (its `exit` ends that task only, as a batch script needs) unless
    `subshell` is False (the script is the task: one process less)."""
    engine = block["engine"]
    body = "\n".join("  " + line for line in _bash_lines(block, exec_file, exec_directory))
    opening, closing = ("(", ")") if subshell else ("{", "}")
    return ("cigri_cerr() { printf 'cigri: container error [%s]: %s (" + engine + ", node %s)\\n' "
            '"$1" "$2" "${HOSTNAME:-unknown}" >&2; }\n'
            f"{name}() {opening}\n{body}\n{closing}\n")


def task_script(block: Mapping[str, Any], exec_file: str, exec_directory: str | None = None) -> str:
    """bash running exec_file in the container with the script's arguments ("$@")."""
    return task_function(block, exec_file, exec_directory, subshell=False) + 'cigri_task "$@"\n'


def wrap_command(block: Mapping[str, Any], exec_directory: str | None, exec_file: str,
                 param: str | None = None) -> str:
    """The one-line command a batch system runs for a task: the parameter line, given here or
    appended later by the batch system (OAR's and Slurm's arrays), becomes the arguments of
    exec_file exactly as without a container (split by the job's shell)."""
    script = "{\n" + task_script(block, exec_file, exec_directory) + "} < /dev/null\n"
    cmd = f"echo {base64.b64encode(script.encode()).decode()}|base64 -d|bash -s --"
    return cmd if param is None else f"{cmd} {param}"


# ------------------------------------------------------------------ outcome
def diagnose(exit_status: int | None, stderr_tail: str) -> tuple[str, str] | None:
    """(cause, message for the user) when a task failed because its container could not run."""
    if exit_status != ERROR_STATUS or not stderr_tail:
        return None
    found = _MARKER.findall(stderr_tail)
    if not found:
        return None
    cause, detail = found[-1]
    return cause, f"Container error ({cause}): {detail}. {ADVICE.get(cause, '')}".rstrip()
