"""Batch-scheduler adapters: `get_adapter(cluster_info)` picks the module for its `batch`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from cigri.clusters.base import (  # noqa: F401 - re-exported interface
    ClusterAdapter,
    ClusterAPIError,
    ClusterInfo,
    ExitStatus,
    JobRequest,
    Outcome,
    RemoteJob,
)

# batch label -> "module:Class"
ADAPTERS: dict[str, str] = {
    "oar2_5": "cigri.clusters.oar2_5:Oar25Adapter",
    "oar3": "cigri.clusters.oar3:Oar3Adapter",
    "local": "cigri.clusters.local:LocalAdapter",
    "slurm": "cigri.clusters.slurm:SlurmAdapter",
}


def get_adapter(cluster: ClusterInfo, conf: Any = None, mapping: Mapping[str, str] | None = None) -> ClusterAdapter:
    target = ADAPTERS.get(cluster.batch)
    if target is None:
        from cigri.clusters.base import ClusterConfigError

        raise ClusterConfigError(f"Batch type '{cluster.batch}' of cluster {cluster.name} is not supported "
                                 f"(known: {', '.join(sorted(ADAPTERS))})", code="GET_JOBS")
    mod_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    return cls(cluster, conf=conf, mapping=mapping)
