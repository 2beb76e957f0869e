"""Create, check and upgrade a CiGri database (used by `cigri-db` and the tests)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.db.engine import is_sqlite


def sql_dir() -> Path:
    """sql/ of the source tree, or share/cigri/sql of an installed CiGri."""
    here = Path(__file__).resolve().parent.parent.parent / "sql"
    for d in (here, Path(sys.prefix) / "share" / "cigri" / "sql", Path("/usr/local/share/cigri/sql")):
        if (d / "cigri3.sql").is_file():
            return d
    raise FileNotFoundError("cannot find CiGri's sql/ directory")


def _one(cur: Any) -> Any:
    """The single row a catalog query returns."""
    row = cur.fetchone()
    assert row is not None
    return row


def run_sql_script(engine: Engine, text: str) -> None:
    """Run a multi-statement SQL script in one transaction."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if is_sqlite(engine):
            raw.driver_connection.executescript(text)  # type: ignore[union-attr]
        else:
            cur.execute(text)
        raw.commit()
    finally:
        raw.close()


def ping(engine: Engine) -> None:
    """A round trip to the database (raises SQLAlchemyError if it cannot be reached)."""
    with engine.connect() as c:
        c.execute(sa.text("SELECT 1"))


def create_database(server: Engine, name: str) -> bool:
    """CREATE DATABASE `name` (UTF-8) on a PostgreSQL server unless it exists; True if created."""
    with server.connect() as c:
        if c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            return False
        c.execute(sa.text(f'CREATE DATABASE "{_ident(name)}" ENCODING \'UTF8\' TEMPLATE template0'))
    return True


def is_initialised(engine: Engine) -> bool:
    return sa.inspect(engine).has_table("campaigns")


def init_schema(engine: Engine) -> None:
    """Create every table, enum and index, the null parameter (id 0) and the seeded rule."""
    d = sql_dir()
    if is_sqlite(engine):
        run_sql_script(engine, (d / "cigri3-sqlite.sql").read_text())
        return
    run_sql_script(engine, (d / "cigri3.sql").read_text())
    run_sql_script(engine, (d / "cigri-py-additions.sql").read_text())


# ------------------------------------------------------------------ check / upgrade
# The expected schema is not hand-maintained: it is what the shipped SQL creates. On
# PostgreSQL the scripts are loaded into the session's temporary schema (pg_temp) inside
# a transaction that is rolled back: any role may do that, including the daemons' role
# of a CiGri3 site, which may not create schemas. On SQLite into an in-memory database.
# Both are then introspected the same way as the live database, through pg_catalog
# (information_schema hides what the current role has no rights on).


@dataclass
class SchemaInfo:
    tables: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)  # table -> col -> (type, nullable)
    enums: dict[str, list[str]] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)  # name -> normalised definition
    sequences: set[str] = field(default_factory=set)
    pkeys: dict[str, list[str]] = field(default_factory=dict)
    defaults: dict[tuple[str, str], str] = field(default_factory=dict)


def split_sql(text: str) -> list[str]:
    """Statements of a SQL script (quotes and -- comments aware)."""
    out: list[str] = []
    buf: list[str] = []
    q, i = False, 0
    while i < len(text):
        ch = text[i]
        if not q and text.startswith("--", i):
            j = text.find("\n", i)
            i = len(text) if j < 0 else j
            continue
        if ch == "'":
            q = not q
        if ch == ";" and not q:
            stmt = "".join(buf).strip()
            if stmt:
                out.append(stmt)
            buf = []
        else:
            buf.append(ch)
        i += 1
    stmt = "".join(buf).strip()
    if stmt:
        out.append(stmt)
    return out


def _pg_info(raw: Any, schema: str) -> SchemaInfo:
    """The schema `schema` ('public', or the session's pg_temp_N) as seen in pg_catalog."""
    info = SchemaInfo()
    cur = raw.cursor()

    def plain(text: str) -> str:
        return text.replace(f"{schema}.", "").replace("pg_temp.", "")

    cur.execute("""SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped""", (schema,))
    for t, col, typ, nullable in cur.fetchall():
        info.tables.setdefault(t, {})[col] = (plain(typ), bool(nullable))
    cur.execute("""SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
                   JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                   JOIN pg_class c ON c.oid = d.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND NOT a.attisdropped""", (schema,))
    for t, col, expr in cur.fetchall():
        info.defaults[(t, col)] = plain(expr)
    cur.execute("""SELECT t.typname, e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
                   JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = %s
                   ORDER BY t.typname, e.enumsortorder""", (schema,))
    for t, label in cur.fetchall():
        info.enums.setdefault(t, []).append(label)
    cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,))
    for name, d in cur.fetchall():
        info.indexes[name] = plain(d)
    cur.execute("""SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND c.relkind = 'S'""", (schema,))
    info.sequences = {r[0] for r in cur.fetchall()}
    cur.execute("""SELECT c.relname, a.attname FROM pg_constraint k
                   JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, pos)
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
                   WHERE n.nspname = %s AND k.contype = 'p' ORDER BY c.relname, u.pos""", (schema,))
    for t, col in cur.fetchall():
        info.pkeys.setdefault(t, []).append(col)
    return info


def _sqlite_info(conn: Any) -> SchemaInfo:
    info = SchemaInfo()
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                         "AND name NOT LIKE 'sqlite_%'")]
    for t in tables:
        for _cid, name, typ, notnull, _d, pk in conn.execute(f'PRAGMA table_info("{t}")'):
            info.tables.setdefault(t, {})[name] = (typ.upper(), not notnull)
            if pk:
                info.pkeys.setdefault(t, []).append(name)
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"):
        info.indexes[name] = " ".join(sql.replace("IF NOT EXISTS ", "").split())
    return info


def expected_schema(engine: Engine) -> SchemaInfo:
    d = sql_dir()
    if is_sqlite(engine):
        import sqlite3
        mem = sqlite3.connect(":memory:")
        mem.executescript((d / "cigri3-sqlite.sql").read_text())
        return _sqlite_info(mem)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SET LOCAL search_path TO pg_temp")
        for name in ("cigri3.sql", "cigri-py-additions.sql"):
            for stmt in split_sql((d / name).read_text()):
                if not stmt.upper().startswith("SELECT SETVAL"):
                    cur.execute(stmt)
        cur.execute("SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()")
        return _pg_info(raw, _one(cur)[0])
    finally:
        raw.rollback()
        raw.close()


def live_schema(engine: Engine) -> SchemaInfo:
    raw = engine.raw_connection()
    try:
        if is_sqlite(engine):
            return _sqlite_info(raw.driver_connection)
        return _pg_info(raw, "public")
    finally:
        raw.rollback()
        raw.close()


def check_schema(engine: Engine) -> tuple[list[str], list[str]]:
    """(differences, notes): what is missing or different vs the shipped schema, and extras."""
    exp, live = expected_schema(engine), live_schema(engine)
    diffs: list[str] = []
    notes: list[str] = []
    for t, cols in sorted(exp.tables.items()):
        if t not in live.tables:
            diffs.append(f"missing table {t}")
            continue
        for c, (typ, nullable) in cols.items():
            have = live.tables[t].get(c)
            if have is None:
                diffs.append(f"missing column {t}.{c} ({typ})")
            elif have[0] != typ:
                diffs.append(f"column {t}.{c} has type {have[0]}, expected {typ}")
            elif have[1] != nullable:
                diffs.append(f"column {t}.{c} is {'' if have[1] else 'NOT '}NULL, expected "
                             f"{'' if nullable else 'NOT '}NULL")
            if have is not None:
                want_d, have_d = exp.defaults.get((t, c)), live.defaults.get((t, c))
                if want_d is not None and have_d != want_d:
                    diffs.append(f"column {t}.{c} has {'default ' + have_d if have_d else 'no default'}, "
                                 f"expected default {want_d}")
        for c in sorted(set(live.tables[t]) - set(cols)):
            notes.append(f"extra column {t}.{c}")
        if exp.pkeys.get(t) != live.pkeys.get(t):
            diffs.append(f"table {t} has primary key {live.pkeys.get(t)}, expected {exp.pkeys.get(t)}")
    for t in sorted(set(live.tables) - set(exp.tables)):
        notes.append(f"extra table {t}")
    for e, labels in sorted(exp.enums.items()):
        have_labels = live.enums.get(e)
        if have_labels is None:
            diffs.append(f"missing enum type {e}")
        elif set(labels) - set(have_labels):
            diffs.append(f"enum {e} lacks labels {', '.join(sorted(set(labels) - set(have_labels)))}")
    for name, d in sorted(exp.indexes.items()):
        if name not in live.indexes:
            diffs.append(f"missing index {name}: {d}")
        elif live.indexes[name] != d:
            diffs.append(f"index {name} is '{live.indexes[name]}', expected '{d}'")
    for name in sorted(set(live.indexes) - set(exp.indexes)):
        notes.append(f"extra index {name}")
    for s in sorted(exp.sequences - live.sequences):
        diffs.append(f"missing sequence {s}")
    if not is_sqlite(engine):
        diffs += _privilege_diffs(engine, exp, live)
    if not diffs or "parameters" in live.tables:
        with engine.connect() as conn:
            if "parameters" in live.tables and conn.execute(
                    sa.text("SELECT count(*) FROM parameters WHERE id = 0")).scalar_one() == 0:
                diffs.append("missing the null parameter row (parameters.id = 0)")
            if "bag_of_tasks" in live.tables and "campaigns" in live.tables:
                orphans = conn.execute(sa.text(
                    "SELECT count(*) FROM bag_of_tasks b WHERE NOT EXISTS "
                    "(SELECT 1 FROM campaigns c WHERE c.id = b.campaign_id)")).scalar_one()
                if orphans:
                    notes.append(f"{orphans} bag_of_tasks rows belong to no campaign (an interrupted "
                                 "submission?); they are never scheduled and can be deleted")
            if "admission_rules" in live.tables:
                from cigri.admission import DISABLED_MARK, _is_python
                from cigri.db.admission_rules import all_rules, duplicate_ids
                for rid, code in all_rules(conn):
                    if code and not code.startswith(DISABLED_MARK) and not _is_python(code):
                        diffs.append(f"admission rule {rid} is not Python (CiGri3 Ruby rule?)")
                for rid, n in duplicate_ids(conn):
                    diffs.append(f"{n} admission rules share the id {rid} (CiGri3 did not advance "
                                 "admission_rules_id_seq): 'cigri-db upgrade' renumbers them, keeping each")
    return diffs, notes


@dataclass
class UpgradeReport:
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    disabled_rules: list[int] = field(default_factory=list)


class NotOwner(RuntimeError):
    """The connected role cannot alter the CiGri schema (CiGri3 sites: tables owned by postgres)."""

    def __init__(self, current: str, owners: list[str], database: str, writers: list[str]):
        self.current, self.owners, self.database = current, owners, database
        grant = f" --grant-to {writers[0]}" if writers else (f" --grant-to {current}" if current else "")
        super().__init__(
            f"the CiGri schema of database {database} belongs to {' and '.join(owners)}; role {current} (this "
            f"connection) cannot upgrade it: run it as {owners[0]} or a superuser, e.g. 'sudo -u postgres "
            f"cigri-db upgrade{grant} --database-url postgresql:///{database}'")


def _owner_check(cur: Any, database: str) -> list[str]:
    """Raise NotOwner unless the current role may alter every CiGri object; returns the roles
    (other than the owners) that can already write the CiGri tables: the daemons'."""
    cur.execute("SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")
    current, superuser = _one(cur)
    cur.execute("""SELECT DISTINCT pg_get_userbyid(owner) FROM (
                     SELECT c.relowner AS owner FROM pg_class c
                     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S')
                     UNION SELECT t.typowner FROM pg_type t
                     WHERE t.typnamespace = 'public'::regnamespace AND t.typtype = 'e') o
                   WHERE NOT pg_has_role(current_user, owner, 'MEMBER') ORDER BY 1""")
    foreign = [r[0] for r in cur.fetchall()]
    writers = _writer_roles(cur)
    if foreign and not superuser:
        raise NotOwner(current, foreign, database, [w for w in writers if w != current] or [current])
    return writers


def _writer_roles(cur: Any) -> list[str]:
    """Roles granted INSERT on campaigns by its owner: the daemons' role of a CiGri3 site."""
    cur.execute("""SELECT DISTINCT r.rolname FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
                   JOIN pg_roles r ON r.oid = a.grantee
                   WHERE c.oid = to_regclass('public.campaigns') AND a.privilege_type = 'INSERT'
                     AND a.grantee <> c.relowner AND NOT r.rolsuper ORDER BY 1""")
    return [r[0] for r in cur.fetchall()]


def _privilege_diffs(engine: Engine, exp: SchemaInfo, live: SchemaInfo) -> list[str]:
    """Roles that may write the CiGri tables (and this connection's role) but lack rights on
    some CiGri table or sequence: the daemons would stop on 'permission denied'."""
    out: list[str] = []
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        roles = set(_writer_roles(cur))
        cur.execute("SELECT current_user")
        roles.add(_one(cur)[0])
        tables = sorted(set(exp.tables) & set(live.tables))
        seqs = sorted((exp.sequences | {s for s in live.sequences if s.endswith("_id_seq")}) & live.sequences)
        for role in sorted(roles):
            cur.execute("""SELECT CASE c.relkind WHEN 'S' THEN 'sequence ' ELSE 'table ' END || c.relname
                           FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND (
                             (c.relkind = 'r' AND c.relname = ANY(%(tables)s) AND NOT (
                               has_table_privilege(%(role)s, c.oid, 'SELECT') AND
                               has_table_privilege(%(role)s, c.oid, 'INSERT') AND
                               has_table_privilege(%(role)s, c.oid, 'UPDATE') AND
                               has_table_privilege(%(role)s, c.oid, 'DELETE')))
                             OR (c.relkind = 'S' AND c.relname = ANY(%(seqs)s) AND NOT (
                               has_sequence_privilege(%(role)s, c.oid, 'USAGE') AND
                               has_sequence_privilege(%(role)s, c.oid, 'UPDATE'))))
                           ORDER BY c.relkind, c.relname""", {"role": role, "tables": tables, "seqs": seqs})
            missing = [r[0] for r in cur.fetchall()]
            if missing:
                out.append(f"role {role} lacks rights on {', '.join(missing)} (the daemons connecting as {role} "
                           f"would fail with 'permission denied'): run 'cigri-db upgrade --grant-to {role}' as the "
                           "schema's owner")
    finally:
        raw.rollback()
        raw.close()
    return out


def upgrade_schema(engine: Engine) -> UpgradeReport:
    """Bring a CiGri3 (or older CiGri-py) database to the current schema, in place: only
    additions (types, labels, tables, columns, indexes, sequences, the null parameter),
    column defaults of the current schema, the users_mapping primary key of CiGri 3.0, and
    the admission rules (ids made unique without losing a rule, the seed rule translated,
    other Ruby rules disabled). Roles that could write the tables before get the same
    rights on what is added. Idempotent; never deletes a row. Raises NotOwner, before
    changing anything, when the connected role cannot alter the schema."""
    rep = UpgradeReport()
    if not is_initialised(engine):
        raise RuntimeError("this database has no CiGri schema (no campaigns table): use 'cigri-db init'")
    if is_sqlite(engine):
        rep.actions += [f"added {what}" for what in upgrade_sqlite(engine)]
        run_sql_script(engine, (sql_dir() / "cigri3-sqlite.sql").read_text())
        rep.actions.append("applied cigri3-sqlite.sql (idempotent)")
        _upgrade_rules(engine, rep)
        return rep
    raw = engine.raw_connection()
    try:
        writers = _owner_check(raw.cursor(), engine.url.database or "?")
    finally:
        raw.rollback()
        raw.close()
    exp, live = expected_schema(engine), live_schema(engine)
    d = sql_dir()
    stmts = split_sql((d / "cigri3.sql").read_text())
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        # enum types and labels first, in their own transaction: a label added in a
        # transaction cannot be used by the indexes created later in that transaction.
        for e, labels in exp.enums.items():
            if e not in live.enums:
                cur.execute(f"CREATE TYPE {_ident(e)} AS ENUM ({', '.join(repr(_ident(x)) for x in labels)})")
                rep.actions.append(f"created enum type {e}")
                continue
            for lab in labels:
                if lab not in live.enums[e]:
                    cur.execute(f"ALTER TYPE {_ident(e)} ADD VALUE IF NOT EXISTS '{_ident(lab)}'")
                    rep.actions.append(f"added label {lab} to enum {e}")
        raw.commit()
        # tables, from the shipped CREATE TABLE statements
        for stmt in stmts:
            m = re.match(r"CREATE TABLE (\w+)", stmt)
            if m and m.group(1) not in live.tables:
                cur.execute(stmt)
                rep.actions.append(f"created table {m.group(1)}")
                live.tables[m.group(1)] = dict(exp.tables.get(m.group(1), {}))
        # columns
        for t, cols in exp.tables.items():
            for c, (typ, nullable) in cols.items():
                if c not in live.tables.get(t, {}):
                    default = exp.defaults.get((t, c))
                    ddl = f'ALTER TABLE {_ident(t)} ADD COLUMN "{_ident(c)}" {typ}'
                    if default and "nextval" not in default:
                        ddl += f" DEFAULT {default}" + ("" if nullable else " NOT NULL")
                        live.defaults[(t, c)] = default
                    elif not nullable:
                        rep.warnings.append(f"column {t}.{c} added as NULL-able (existing rows have no value)")
                    cur.execute(ddl)
                    rep.actions.append(f"added column {t}.{c}")
        # defaults of existing columns (CiGri 3.1: clusters.api_chunk_size DEFAULT 0); rows keep their values
        for (t, c), want in sorted(exp.defaults.items()):
            have = live.defaults.get((t, c))
            if c in live.tables.get(t, {}) and have != want and not (have is None and "nextval" in want):
                cur.execute(f'ALTER TABLE {_ident(t)} ALTER COLUMN "{_ident(c)}" SET DEFAULT {want}')
                rep.actions.append(f"column {t}.{c}: default {have or 'none'} -> {want}")
        # users_mapping: CiGri 3.0 had PRIMARY KEY (grid_login)
        pk = live.pkeys.get("users_mapping")
        if pk is not None and pk != exp.pkeys.get("users_mapping"):
            cur.execute("SELECT count(*) FROM users_mapping WHERE cluster_id IS NULL")
            nulls = _one(cur)[0]
            if nulls:
                rep.warnings.append(f"users_mapping has {nulls} rows with NULL cluster_id: primary key left as "
                                    f"{pk}; fix them and run upgrade again")
            else:
                cur.execute("""SELECT conname FROM pg_constraint WHERE conrelid = 'users_mapping'::regclass
                               AND contype = 'p'""")
                con = _one(cur)[0]
                cur.execute(f'ALTER TABLE users_mapping DROP CONSTRAINT "{_ident(con)}"')
                cur.execute("ALTER TABLE users_mapping ADD PRIMARY KEY (grid_login, cluster_id)")
                rep.actions.append("users_mapping primary key is now (grid_login, cluster_id)")
        elif pk is None and "users_mapping" in live.tables:
            rep.warnings.append("users_mapping has no primary key")
        # indexes of cigri3.sql, then the idempotent additions script
        live_idx = set(live.indexes)
        for stmt in stmts:
            m = re.match(r"CREATE INDEX (\w+)", stmt)
            if m and m.group(1) not in live_idx:
                cur.execute(stmt)
                rep.actions.append(f"created index {m.group(1)}")
        for stmt in split_sql((d / "cigri-py-additions.sql").read_text()):
            cur.execute(stmt)
        rep.actions.append("applied cigri-py-additions.sql (idempotent)")
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()
    _upgrade_rules(engine, rep)
    for role in writers:
        grant_to(engine, role)
        rep.actions.append(f"rights on every CiGri table and sequence granted to {role} (it could already write "
                           "the CiGri tables)")
    return rep


def _sqlite_columns(conn: Any) -> dict[str, dict[str, tuple[str, bool, str | None]]]:
    """table -> column -> (type, NOT NULL, default) of a sqlite3 connection's database."""
    out: dict[str, dict[str, tuple[str, bool, str | None]]] = {}
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                         "AND name NOT LIKE 'sqlite_%'")]
    for t in tables:
        out[t] = {name: (typ, bool(notnull), dflt)
                  for _cid, name, typ, notnull, dflt, _pk in conn.execute(f'PRAGMA table_info("{_ident(t)}")')}
    return out


def upgrade_sqlite(engine: Engine) -> list[str]:
    """Bring a SQLite database made by an older CiGri-py to the shipped layout: the columns
    added since (existing rows get NULL or the column's default), then the tables and indexes
    it lacks (cigri3-sqlite.sql is idempotent). `make_engine` runs it whenever a process opens
    an existing SQLite database, so every command finds the columns it reads. Costs two
    catalogue reads and takes no lock when nothing is missing; columns are added in one write
    transaction that re-reads them under its lock (two processes opening the database at once
    add each column once). Returns what it added."""
    import sqlite3

    mem = sqlite3.connect(":memory:")
    try:
        script = (sql_dir() / "cigri3-sqlite.sql").read_text()
        mem.executescript(script)
        want = _sqlite_columns(mem)
    finally:
        mem.close()
    with engine.connect() as conn:
        have = _sqlite_columns(conn.connection.driver_connection)
    if "campaigns" not in have or all(c in have.get(t, {}) for t, cols in want.items() for c in cols):
        return []  # not a CiGri database (yet), or up to date
    added: list[str] = []
    with engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock
        have = _sqlite_columns(conn.connection.driver_connection)
        for t, cols in want.items():
            for c, (typ, notnull, dflt) in cols.items():
                if t not in have or c in have[t]:
                    continue
                if notnull and dflt is None:
                    raise RuntimeError(f"column {t}.{c} (NOT NULL, no default) cannot be added to existing rows")
                ddl = f'ALTER TABLE "{_ident(t)}" ADD COLUMN "{_ident(c)}" {typ}'
                if dflt is not None:
                    ddl += f" DEFAULT {dflt}" + (" NOT NULL" if notnull else "")
                conn.exec_driver_sql(ddl)
                added.append(f"column {t}.{c}")
    added += [f"table {t}" for t in want if t not in have]
    run_sql_script(engine, script)
    return added


def _ident(s: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", s):
        raise ValueError(f"unexpected identifier {s!r}")
    return s


def _upgrade_rules(engine: Engine, rep: UpgradeReport) -> None:
    from cigri.admission import is_seed_rule, translate_ruby_rule
    from cigri.db.admission_rules import repair_rules

    with engine.begin() as c:
        r = repair_rules(c, translate_ruby_rule, is_seed_rule)
    rep.actions += r.actions
    rep.warnings += r.warnings
    rep.disabled_rules += r.disabled


def grant_to(engine: Engine, role: str) -> None:
    """CiGri3's init_db.rb habit: the application role gets DML rights on every table and
    sequence (needed when the schema is created or upgraded by another role)."""
    if is_sqlite(engine):
        return
    quoted = engine.dialect.identifier_preparer.quote(role)
    with engine.begin() as c:
        c.execute(sa.text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}"))
        c.execute(sa.text(f"GRANT SELECT, UPDATE, USAGE ON ALL SEQUENCES IN SCHEMA public TO {quoted}"))


def database_conf_values(url: str | sa.engine.URL) -> dict[str, str]:
    """The cigri.conf variables that reach the PostgreSQL database at `url`."""
    u = sa.make_url(url)
    return {"DATABASE_TYPE": "PostgreSQL", "DATABASE_HOST": u.host or "127.0.0.1",
            "DATABASE_PORT": str(u.port or 5432), "DATABASE_NAME": u.database or "",
            "DATABASE_USER_NAME": u.username or "cigri", "DATABASE_USER_PASSWORD": u.password or "cigri",
            "DATABASE_SSL_MODE": "disable"}


def create_scratch_database(server: str, name: str) -> dict[str, str]:
    """(Re)create an empty PostgreSQL database `name` with the CiGri schema on the server at
    `server` (a URL without database, whose role has CREATEDB). For tests and benchmarks;
    returns its cigri.conf variables."""
    drop_scratch_database(server, name)
    _server_statement(server, f"CREATE DATABASE {_ident(name)} ENCODING 'UTF8' TEMPLATE template0")
    eng = sa.create_engine(f"{server}/{name}")
    try:
        init_schema(eng)
    finally:
        eng.dispose()
    return database_conf_values(f"{server}/{name}")


def drop_scratch_database(server: str, name: str) -> None:
    _server_statement(server, f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")


def _server_statement(server: str, statement: str) -> None:
    """One statement outside any transaction (CREATE/DROP DATABASE), on the server's
    maintenance database."""
    adm = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with adm.connect() as c:
            c.execute(sa.text(statement))
    finally:
        adm.dispose()
