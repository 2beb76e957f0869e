"""clusters rows (the local cluster's included) and users_mapping rows: logins and users'
tokens on each cluster."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.clusters.base import ClusterInfo
from cigri.db.schema import clusters, users_mapping
from cigri.errors import NotFound


def get_cluster(conn: Connection, cluster_id: int | None = None, name: str | None = None) -> ClusterInfo:
    """By id (enabled or not), or by name (enabled only, as CiGri3)."""
    q = sa.select(clusters)
    if cluster_id is not None:
        q = q.where(clusters.c.id == cluster_id)
    elif name is not None:
        q = q.where(clusters.c.name == name, clusters.c.enabled.is_(True))
    else:
        raise NotFound("A cluster needs an id or a name")
    row = conn.execute(q).mappings().first()
    if row is None:
        raise NotFound(f"Cluster {cluster_id if cluster_id is not None else name} not found")
    return ClusterInfo.from_row(dict(row))


def list_clusters(conn: Connection, enabled_only: bool = True) -> list[ClusterInfo]:
    q = sa.select(clusters).order_by(clusters.c.id)
    if enabled_only:
        q = q.where(clusters.c.enabled.is_(True))
    return [ClusterInfo.from_row(dict(r)) for r in conn.execute(q).mappings()]


def cluster_ids_by_name(conn: Connection, names: list[str]) -> dict[str, int]:
    """Known cluster names (enabled or not) -> id (spec AC-12)."""
    if not names:
        return {}
    q = sa.select(clusters.c.name, clusters.c.id).where(clusters.c.name.in_(names))
    return {r.name: int(r.id) for r in conn.execute(q)}


def add_cluster(conn: Connection, **values: Any) -> int:
    return int(conn.execute(clusters.insert().values(**values).returning(clusters.c.id)).scalar_one())


def set_enabled(conn: Connection, cluster_id: int, enabled: bool) -> None:
    res = conn.execute(clusters.update().where(clusters.c.id == cluster_id).values(enabled=enabled))
    if not res.rowcount:
        raise NotFound(f"Cluster {cluster_id} not found")


def set_container_engines(conn: Connection, cluster_id: int, engines: str | None) -> None:
    res = conn.execute(clusters.update().where(clusters.c.id == cluster_id).values(container_engines=engines))
    if not res.rowcount:
        raise NotFound(f"Cluster {cluster_id} not found")


def set_slurm_options(conn: Connection, cluster_id: int, values: dict[str, str | None]) -> None:
    """Partitions, QOS, preemption mode and key file of a Slurm cluster (docs/slurm.md)."""
    allowed = {"normal_partition", "besteffort_partition", "besteffort_qos", "besteffort_mode", "jwt_key_file"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"not a Slurm cluster setting: {', '.join(sorted(unknown))}")
    res = conn.execute(clusters.update().where(clusters.c.id == cluster_id).values(**values))
    if not res.rowcount:
        raise NotFound(f"Cluster {cluster_id} not found")


def container_engines(conn: Connection, ids: list[int]) -> dict[int, str | None]:
    """Cluster id -> the container engines its admin declared (None: not declared)."""
    if not ids:
        return {}
    q = sa.select(clusters.c.id, clusters.c.container_engines).where(clusters.c.id.in_(ids))
    return {int(r.id): r.container_engines for r in conn.execute(q)}


def user_mapping(conn: Connection, cluster_id: int) -> dict[str, str]:
    """grid_login -> cluster_login (or "Bearer <jwt>") for one cluster."""
    q = sa.select(users_mapping.c.grid_login, users_mapping.c.cluster_login).where(
        users_mapping.c.cluster_id == cluster_id)
    return {r.grid_login: r.cluster_login for r in conn.execute(q) if r.cluster_login is not None}


def ensure_local_cluster(conn: Connection, name: str = "local", api_url: str = "local://") -> int:
    """The `local` cluster row (created enabled if missing; re-enabled if disabled)."""
    row = conn.execute(sa.select(clusters.c.id, clusters.c.enabled).where(clusters.c.name == name)).first()
    if row is not None:
        if not row.enabled:
            conn.execute(clusters.update().where(clusters.c.id == row.id).values(enabled=True))
        return int(row.id)
    return int(conn.execute(clusters.insert().values(
        name=name, api_url=api_url, batch="local", api_auth_type="none", resource_unit="core",
        api_chunk_size=1000, api_limit=1000, power=1, stress_factor=0.0, enabled=True,
    ).returning(clusters.c.id)).scalar_one())


def enabled_cluster_batches(conn: Connection) -> dict[int, str]:
    """id -> batch type of the enabled clusters."""
    q = sa.select(clusters.c.id, clusters.c.batch).where(clusters.c.enabled.is_(True))
    return {int(i): str(b) for i, b in conn.execute(q)}


def cluster_representation(conn: Connection, cluster_id: int, threshold: float) -> dict[str, Any] | None:
    r = conn.execute(sa.select(clusters).where(clusters.c.id == cluster_id)).mappings().first()
    if r is None:
        return None
    from cigri.clusters.base import ClusterInfo
    from cigri.db.events import cluster_blacklisted

    info = ClusterInfo.from_row(dict(r))
    d = {k: v for k, v in dict(r).items() if k not in ("api_username", "api_password", "jwt_key_file")}
    d["api_auth_header"] = info.api_auth_header
    sf = float(d.get("stress_factor") or 0.0)
    d["blacklisted"] = cluster_blacklisted(conn, cluster_id)
    d["under_stress"] = sf >= threshold
    d["stress_factor"] = f"{sf}/{threshold}"
    return d


def cluster_auth_type(conn: Connection, cluster_id: int) -> str | None:
    return conn.execute(sa.select(clusters.c.api_auth_type).where(clusters.c.id == cluster_id)).scalar()


def list_tokens(conn: Connection, grid_login: str) -> list[dict[str, Any]]:
    q = (sa.select(users_mapping.c.cluster_id, users_mapping.c.cluster_login)
         .select_from(users_mapping.join(clusters, clusters.c.id == users_mapping.c.cluster_id))
         .where(users_mapping.c.grid_login == grid_login, clusters.c.api_auth_type == "jwt")
         .order_by(users_mapping.c.cluster_id))
    return [{"cluster_id": int(c), "cluster_login": login} for c, login in conn.execute(q)]


def upsert_token(conn: Connection, grid_login: str, cluster_id: int, token: str) -> None:
    value = f"Bearer {token}"
    res = conn.execute(users_mapping.update().where(users_mapping.c.grid_login == grid_login,
                                                    users_mapping.c.cluster_id == cluster_id)
                       .values(cluster_login=value))
    if not res.rowcount:
        conn.execute(users_mapping.insert().values(grid_login=grid_login, cluster_id=cluster_id, cluster_login=value))


def delete_token(conn: Connection, grid_login: str, cluster_id: int) -> int:
    res = conn.execute(users_mapping.delete().where(users_mapping.c.grid_login == grid_login,
                                                    users_mapping.c.cluster_id == cluster_id))
    return int(res.rowcount or 0)



def enabled_cluster_names(conn: Connection) -> dict[int, str]:
    """id -> name of the enabled clusters, by id."""
    q = sa.select(clusters.c.id, clusters.c.name).where(clusters.c.enabled.is_(True)).order_by(clusters.c.id)
    return {int(i): n for i, n in conn.execute(q)}


def all_cluster_names(conn: Connection) -> dict[int, str]:
    """id -> name of every cluster, enabled or not (events and jobs name their cluster)."""
    return {int(i): n for i, n in conn.execute(sa.select(clusters.c.id, clusters.c.name))}
