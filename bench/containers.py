#!/usr/bin/env python3
"""Per-task cost of each container engine: the same task (`/opt/demo/bin/run.sh NAME 1` of the
example image: it reads a bound file and writes a result file) run as CiGri runs it, through
`sh -c` in its working directory, (a) without a container (the limit, measured in the same
run: a process of the task itself), (b) in each engine through CiGri's command
(cigri.containers.wrap_command) and (c) through the engine's bare command line, so that the
cost of CiGri's checks shows apart from the engine's own start. Runs are interleaved (one of
each in turn) so that load on the machine hits every variant alike.

    .venv/bin/python bench/containers.py [-n 40] [--user alice] [--engines charliecloud,bwrap,podman]

As root, --user runs everything as that user (rootless engines); podman is measured only
when a probe run works (else the table says why)."""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cigri import containers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("charliecloud", "bwrap", "podman", "apptainer")


def bare(engine: str, image: Path, work: Path, data: Path) -> str | None:
    """The engine's own minimal command line for the same task (same binds, same cwd)."""
    img, wd = str(image), str(work)
    if engine == "charliecloud":
        return f"ch-run -b {wd} -b {data}:/data -c {wd} {img} -- /opt/demo/bin/run.sh"
    if engine == "bwrap":  # bwrap 0.8 cannot mount on a missing directory: the work dir at /tmp/w
        return (f"bwrap --ro-bind {img} / --tmpfs /tmp --bind {wd} /tmp/w --ro-bind {data} /data "
                f"--proc /proc --dev /dev --chdir /tmp/w /opt/demo/bin/run.sh")
    if engine == "podman":
        return (f"podman --log-level=error run --rm --network=host --userns=keep-id -v {wd}:{wd} -w {wd} "
                f"-v {data}:/data:ro --rootfs {img}:O /opt/demo/bin/run.sh")
    if engine == "apptainer":
        return f"apptainer exec --bind {wd} --bind {data}:/data --pwd {wd} {img} /opt/demo/bin/run.sh"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=40, help="runs of each variant (default 40)")
    ap.add_argument("--user", help="run as this user (when started as root)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    args = ap.parse_args()
    pw = pwd.getpwnam(args.user) if args.user else pwd.getpwuid(os.getuid())
    base = Path(tempfile.mkdtemp(prefix="cigri-bench-ctr-", dir="/tmp"))
    os.chmod(base, 0o755)
    demo = base / "demo"
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name, "LANG": "C.UTF-8",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "CIGRI_CAMPAIGN_ID": "1", "OAR_JOB_ID": "1"}
    # rootless podman: its configuration, image store and runtime files in this run's directory
    # (nothing left in the user's home; podman pins them in its database at first use), with a
    # short runtime path (conmon's socket paths must fit in 108 bytes)
    run_dir = base / "run"
    xdg = {"XDG_RUNTIME_DIR": run_dir, "XDG_CONFIG_HOME": base / "config", "XDG_DATA_HOME": base / "data"}
    for d in xdg.values():
        d.mkdir(mode=0o700)
    (base / "config" / "containers").mkdir()
    (base / "config" / "containers" / "storage.conf").write_text('[storage]\ndriver = "overlay"\n')
    if shutil.which("podman") and not shutil.which("crun"):  # hosts without systemd and crun (this one)
        (base / "config" / "containers" / "containers.conf").write_text(
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env |= {k: str(v) for k, v in xdg.items()}
    prefix: list[str] = []
    if args.user:
        prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
        for p in (base, *xdg.values(), base / "config" / "containers"):
            shutil.chown(p, pw.pw_name, pw.pw_name)
    try:
        return measure(args, prefix, env, base, demo)
    finally:
        pause = run_dir / "libpod" / "tmp" / "pause.pid"
        if pause.exists():  # the pause process rootless podman leaves behind
            try:
                os.kill(int(pause.read_text().strip()), 9)
            except (ValueError, ProcessLookupError):
                pass
        shutil.rmtree(base, ignore_errors=True)


def measure(args: argparse.Namespace, prefix: list[str], env: dict[str, str], base: Path, demo: Path) -> int:
    def sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, "sh", "-c", cmd], cwd=cwd, env={k: v for k, v in env.items() if v},
                              capture_output=True, text=True, timeout=300)

    r = sh(f"sh {ROOT}/conf/examples/make-container-image {demo}", base)
    if r.returncode:
        print(r.stderr, file=sys.stderr)
        return 1
    image, work, data = demo / "image", demo / "runs", demo / "data"
    variants: dict[str, str] = {"none (the task itself)": f"{image}/opt/demo/bin/run.sh"}
    skipped: dict[str, str] = {}
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        binary = containers.BINARIES[engine]
        if not shutil.which(binary, path=env["PATH"]):
            skipped[engine] = f"{binary} not installed"
            continue
        block = containers.finish_block({"engine": engine, "image": str(image), "bind": [f"{data}:/data:ro"],
                                         "env": {"GREETING": "bench"}}, "bench")
        cigri = containers.wrap_command(block, str(work), "/opt/demo/bin/run.sh")
        raw = bare(engine, image, work, data)
        probe = sh(f"{cigri} probe 1", work)
        if probe.returncode or probe.stderr:
            skipped[engine] = f"does not run here: {(probe.stderr or probe.stdout).strip()[-200:]}"
            continue
        variants[f"{engine} (CiGri's command)"] = cigri
        if raw:
            variants[f"{engine} (bare engine)"] = raw
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    load0 = os.getloadavg()[0]
    for i in range(args.n):
        for name, cmd in variants.items():
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            r = sh(f"export CIGRI_CAMPAIGN_ID=1;{cmd} t{i} 1", work)
            dt = time.perf_counter() - t
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if r.returncode:
                print(f"{name}: exit {r.returncode}: {r.stderr.strip()[-300:]}", file=sys.stderr)
                return 1
            times[name].append(dt * 1000)
            cpu[name].append((c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * 1000)
    limit = statistics.median(times["none (the task itself)"])
    limit_cpu = statistics.median(cpu["none (the task itself)"])
    print(f"Per-task cost, {args.n} runs of each (interleaved), as {env['USER']}, load "
          f"{load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'variant':32} {'wall ms':>8} {'p10':>6} {'p90':>6} {'overhead':>9} {'cpu ms':>7} {'overhead':>9}")
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        med, mcpu = statistics.median(ts), statistics.median(cpu[name])
        print(f"{name:32} {med:8.1f} {q[0]:6.1f} {q[-1]:6.1f} {med - limit:9.1f} {mcpu:7.1f} {mcpu - limit_cpu:9.1f}")
    for engine, why in skipped.items():
        print(f"{engine:32} not measured: {why}")
    print(f"limit: 'none' is the same task as its own process ({limit:.1f} ms wall, {limit_cpu:.1f} ms cpu); "
          "overhead = median minus that limit; cpu = user+sys of the processes the command waited for "
          "(podman's conmon is not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
