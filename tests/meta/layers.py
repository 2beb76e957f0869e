"""Static checks of the rules the code keeps (issue #12's grep-level checks), by reading
the sources' syntax trees: what a `grep` would approximate, without its false alarms in
comments and messages. tests/meta/test_layers.py runs them over the project and over
samples that break each rule.

- The data layer: no SQL outside `cigri/db/` (docs/architecture.md, "The data layer").
- CiGri's vocabulary: no OAR state word outside the OAR adapters (`cigri/clusters/oar*`).
- One writer of job states: `cigri.db.jobs.change_state` / `change_states`."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: the code the rules apply to (tests and bench/ may use SQL: bench/ measures CiGri against raw SQL)
SCANNED = ("cigri", "modules")

#: what code outside cigri/db may take from SQLAlchemy: connection and engine types, URLs, errors
SA_ALLOWED = {"exc", "engine", "Engine", "Connection", "make_url", "URL"}
SA_ALLOWED_MODULES = {"sqlalchemy.exc", "sqlalchemy.engine", "sqlalchemy.engine.url"}
#: calls that run SQL, whatever the object
SQL_CALLS = {"execute", "exec_driver_sql", "executemany", "executescript", "raw_connection"}
#: a string that reads as an SQL statement
SQL_TEXT = re.compile(r"^\s*(SELECT\s.+\sFROM\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|"
                      r"CREATE\s+(TABLE|INDEX|TYPE)\s|ALTER\s+(TABLE|TYPE)\s|DROP\s+TABLE\s|TRUNCATE\s|PRAGMA\s|"
                      r"LISTEN\s|NOTIFY\s|COPY\s)", re.S)

#: OAR's job states (OAR 2.5 and 3): only the OAR adapters translate them into CiGri's outcomes
OAR_STATES = {"Waiting", "Hold", "toLaunch", "toError", "toAckReservation", "Launching", "Running",
              "Suspended", "Resuming", "Finishing", "Terminated", "Error"}
#: (path prefix, word): a string that happens to equal an OAR state word, and why it is not one
OAR_WORD_ALLOWED = {
    ("cigri/api/", "Error"): "the title of CiGri3's API error bodies ({'title': 'Error', ...})",
    ("cigri/cli/local.py", "Resuming"): "English: `cigri local run` says it resumes a campaign",
}

#: the one place allowed to UPDATE jobs.state
JOB_STATE_WRITERS = {("cigri/db/jobs.py", "change_state"), ("cigri/db/jobs.py", "change_states")}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def sources(prefixes: tuple[str, ...] = SCANNED) -> Iterator[tuple[str, str]]:
    """(path relative to the repository, text) of every Python file under `prefixes`."""
    for prefix in prefixes:
        for p in sorted((ROOT / prefix).rglob("*.py")):
            yield p.relative_to(ROOT).as_posix(), p.read_text()


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (prose, not values)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _strings(tree: ast.AST) -> Iterator[ast.Constant]:
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def _in_data_layer(path: str) -> bool:
    return path.startswith("cigri/db/")


def sql_findings(path: str, text: str) -> list[Finding]:
    """SQL outside cigri/db: tables imported, SQLAlchemy's statement builders, database drivers,
    statements executed, SQL text."""
    if _in_data_layer(path):
        return []
    tree = ast.parse(text, path)
    out: list[Finding] = []

    def add(node: ast.AST, what: str) -> None:
        out.append(Finding(path, getattr(node, "lineno", 0), what))

    sa_names: set[str] = set()  # local names bound to the sqlalchemy package
    driver_names: dict[str, str] = {}  # local name -> psycopg
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "cigri.db.schema" or a.name.startswith("cigri.db.schema."):
                    add(node, "imports the tables (cigri.db.schema): call a function of cigri.db instead")
                elif a.name == "sqlalchemy":
                    sa_names.add(a.asname or a.name)
                elif a.name.startswith("sqlalchemy.") and a.name not in SA_ALLOWED_MODULES:
                    add(node, f"imports {a.name}: SQL is written in cigri/db only")
                elif a.name == "sqlite3":
                    add(node, "uses the database driver sqlite3: database access lives in cigri/db")
                elif a.name == "psycopg":  # its exceptions may be caught anywhere
                    driver_names[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import: resolve against the file's package
                pkg = path.removesuffix(".py").split("/")[:-node.level]
                mod = ".".join([*pkg, *([mod] if mod else [])])
            names = [a.name for a in node.names]
            if mod == "cigri.db.schema" or mod.startswith("cigri.db.schema.") or \
                    (mod == "cigri.db" and "schema" in names):
                add(node, "imports the tables (cigri.db.schema): call a function of cigri.db instead")
            elif mod == "sqlalchemy":
                for n in names:
                    if n not in SA_ALLOWED:
                        add(node, f"imports sqlalchemy.{n}: SQL is written in cigri/db only")
            elif mod.startswith("sqlalchemy.") and mod not in SA_ALLOWED_MODULES:
                add(node, f"imports from {mod}: SQL is written in cigri/db only")
            elif mod == "sqlite3" or (mod == "psycopg" and any(not n.endswith(("Error", "errors")) for n in names)):
                add(node, f"uses the database driver {mod}: database access lives in cigri/db")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in sa_names and node.attr not in SA_ALLOWED:
                add(node, f"uses sqlalchemy.{node.attr}: SQL is written in cigri/db only")
            elif node.value.id in driver_names and not node.attr.endswith(("Error", "errors")):
                add(node, f"uses {driver_names[node.value.id]}.{node.attr}: database access lives in cigri/db")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            add(node, f".{node.func.attr}(): statements are run by cigri/db only")
    for s in _strings(tree):
        if SQL_TEXT.match(s.value):
            add(s, f"SQL text {s.value.strip()[:40]!r}: SQL is written in cigri/db only")
    return sorted(set(out), key=lambda f: f.line)


def oar_word_findings(path: str, text: str) -> list[Finding]:
    """A string value equal to an OAR state word outside the OAR adapters (docstrings, comments
    and longer messages may name them)."""
    if re.match(r"cigri/clusters/oar[^/]*\.py$", path):
        return []
    out = []
    for s in _strings(ast.parse(text, path)):
        word = s.value.strip()
        if word in OAR_STATES and not any(path.startswith(p) and word == w for p, w in OAR_WORD_ALLOWED):
            out.append(Finding(path, s.lineno, f"OAR state word {word!r}: only cigri/clusters/oar* speak OAR; "
                                                "use CiGri's outcomes (cigri.clusters.base.Outcome) or states"))
    return out


def _is_jobs(node: ast.AST) -> bool:
    """The jobs table: `jobs` or `<module>.jobs`."""
    return (isinstance(node, ast.Name) and node.id == "jobs") or \
        (isinstance(node, ast.Attribute) and node.attr == "jobs")


def job_state_write_findings(path: str, text: str) -> list[Finding]:
    """UPDATEs of the jobs table (builder or SQL text) outside change_state/change_states."""
    tree = ast.parse(text, path)
    out: list[Finding] = []

    def visit(node: ast.AST, func: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name if func is None else func
        allowed = (path, func) in JOB_STATE_WRITERS
        if not allowed and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "update" and _is_jobs(f.value) and not node.args:
                out.append(Finding(path, node.lineno, "jobs.update(): job rows change through "
                                                      "cigri.db.jobs.change_state/change_states"))
            name = f.attr if isinstance(f, ast.Attribute) else f.id
            if name == "update" and node.args and _is_jobs(node.args[0]):
                out.append(Finding(path, node.lineno, "update(jobs): job rows change through "
                                                      "cigri.db.jobs.change_state/change_states"))
        if not allowed and isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.search(r"\bUPDATE\s+jobs\b", node.value, re.I) and re.search(r"\bSET\b", node.value, re.I):
            out.append(Finding(path, node.lineno, "UPDATE jobs in SQL text: job rows change through "
                                                  "cigri.db.jobs.change_state/change_states"))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, None)
    return out
