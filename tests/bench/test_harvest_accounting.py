"""The figures bench/harvest.py publishes (issue #15) are computed right from batch records:
what is clipped to the window, what counts as useful, killed or idle, and the SWF workloads
it replays. Pure functions, no testbed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


harvest = load("harvest")
workload = load("workload")


def rec(kind: str, cores: int, submit: int, start: int | None, stop: int | None, outcome: str = "completed",
        index: int | None = None, resources: list[int] | None = None) -> object:
    return harvest.JobRec(0, kind, cores, submit, start, stop, outcome, resources or [], index)


def test_core_seconds_are_clipped_to_the_window_and_sorted_by_outcome() -> None:
    t0, t1 = 1000, 1100
    jobs = [
        rec("normal", 2, 1000, 1010, 1060, index=1),  # 100 core-s
        rec("cigri", 1, 950, 960, 1020),  # started before the window: 20 s of it count
        rec("cigri", 1, 1050, 1080, 1130),  # completed after the window: its 20 s inside count as useful
        rec("cigri", 1, 1000, 1020, 1040, outcome="killed"),  # 20 core-s of kill waste
        rec("cigri", 1, 1000, None, None, outcome="deleted"),  # never started: waited the whole window
        rec("cigri", 1, 900, 900, 990),  # entirely before the window: nothing
    ]
    f = harvest.figures(harvest.ClusterRecords(4, [[0, 5000, 4]], jobs), t0, t1)
    assert (f.available, f.normal, f.useful, f.killed, f.other) == (400, 100, 40, 20, 0)
    assert f.idle == 400 - 100 - 40 - 20
    assert f.otherwise_idle == 300 and f.harvest == pytest.approx(40 / 300)
    assert (f.tasks_completed, f.tasks_killed) == (2, 1)
    # idle while a CiGri job waited in the batch system is the batch system's, not the engine's
    assert f.idle_nothing_waiting == 0
    assert f.idle_normal_waiting == 4 * 10 - 1 * 10  # t 1000-1010: the normal job waits, one CiGri job runs
    assert f.idle_batch + f.idle_normal_waiting == f.idle


def test_availability_follows_the_resource_logs() -> None:
    # core 2 is Alive only for the second half of the window
    f = harvest.figures(harvest.ClusterRecords(2, [[0, 5000, 1], [1050, 5000, 1]], []), 1000, 1100)
    assert f.available == 150 and f.idle == 150 and f.idle_nothing_waiting == 150


def test_waits_and_the_normal_jobs_that_killed_cigri_tasks() -> None:
    p = harvest.Phase("B", 1000, 1100, {}, {})
    p.records = {"c1": harvest.ClusterRecords(4, [[0, 5000, 4]], [
        rec("normal", 2, 1010, 1025, 1090, index=7, resources=[1, 2]),
        rec("normal", 1, 1030, 1031, 1090, index=8, resources=[3]),
        rec("cigri", 1, 990, 995, 1024, outcome="killed", resources=[2]),
        rec("cigri", 1, 990, 995, 1050, outcome="killed", resources=[4]),  # killed later, for nobody here
    ])}
    assert harvest.waits(p) == {7: 15, 8: 1}
    assert harvest.displaced(p) == {7: 1}


def test_swf_round_trip_and_bad_lines(tmp_path: Path) -> None:
    clusters = {"c1": 32, "c2": 8}
    jobs = workload.generate(clusters, 300, seed=3, load=0.5)
    assert jobs and {j.cluster for j in jobs} == {"c1", "c2"}
    assert jobs == workload.generate(clusters, 300, seed=3, load=0.5)  # seeded
    for c, cores in clusters.items():  # the jobs ask for about `load` of each cluster
        work = sum(j.cores * j.runtime for j in jobs if j.cluster == c)
        assert 0.5 * cores * 300 <= work < 0.5 * cores * 300 + cores * 180
    path = tmp_path / "w.swf"
    workload.write_swf(jobs, path, clusters)
    back = workload.read_swf(path, clusters)
    shift = min(round(j.submit) for j in jobs)
    assert [(round(j.submit) - shift, j.cluster, j.cores, j.runtime, j.walltime, j.user) for j in jobs] == \
           [(b.submit, b.cluster, b.cores, b.runtime, b.walltime, b.user) for b in back]
    path.write_text("; comment\n1 0 -1 30 4\n")
    with pytest.raises(workload.SWFError, match=r"w.swf:2: an SWF line has 18 fields, this one has 5"):
        workload.read_swf(path, clusters)
    # a job bigger than its cluster is clipped to it; partitions beyond the testbed are left out
    path.write_text("1 5 -1 30 64 -1 -1 64 60 -1 1 2 1 -1 1 2 -1 -1\n2 9 -1 30 1 -1 -1 1 60 -1 1 1 1 -1 1 7 -1 -1\n")
    assert [(j.submit, j.cluster, j.cores, j.user) for j in workload.read_swf(path, clusters)] == [(0, "c2", 8, "bob")]
