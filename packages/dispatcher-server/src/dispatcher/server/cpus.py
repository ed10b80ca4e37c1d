"""How many CPUs the service may use: the default of ``service.pool.max_workers``.

Not ``os.cpu_count()``, which counts the machine's: a container limited to one CPU on a
64-core node would start 64 workers. The CPUs this process may run on (its affinity: a
cpuset, ``taskset``, Kubernetes' static CPU manager), and no more than its cgroup's CPU
quota allows (a container's CPU limit, systemd's ``CPUQuota=``), rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
"""Where the cgroup file systems are mounted."""
OWN_CGROUPS: Final = Path("/proc/self/cgroup")
"""The cgroups of this process, one ``id:controllers:path`` line per hierarchy."""

_V1_CPU_MOUNTS: Final = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
"""The directories of :data:`CGROUP_ROOT` where cgroup v1 mounts the ``cpu`` controller."""


def usable_cpus(root: Path = CGROUP_ROOT, own: Path = OWN_CGROUPS) -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's quota (at least 1).

    *root* and *own*: see :func:`cpu_quota`.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(root, own)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(cpus, 1)


def cpu_quota(root: Path = CGROUP_ROOT, own: Path = OWN_CGROUPS) -> int | None:
    """The CPUs the quota of this process's cgroup allows, rounded up; ``None``: no quota.

    The smallest quota of its cgroup and the cgroups above it: cgroup v2's ``cpu.max``
    (``150000 100000``: 2 CPUs; ``max 100000``: none), or cgroup v1's
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (a quota of -1: none). *root* is
    where the cgroup file systems are mounted, *own* the file listing the process's
    cgroups (in a container with a cgroup namespace, its own cgroup is the root).
    Unreadable files count as no quota.
    """
    try:
        lines = own.read_text().splitlines()
    except OSError:
        lines = []
    quotas: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2's unified hierarchy
            for folder in _upwards(root, path):
                quotas += _v2_quota(folder / "cpu.max")
        elif "cpu" in controllers.split(","):
            for mount in _V1_CPU_MOUNTS:
                for folder in _upwards(root / mount, path):
                    quotas += _v1_quota(folder)
    if not lines:  # no word of our cgroups: the mount points themselves
        quotas += _v2_quota(root / "cpu.max")
        for mount in _V1_CPU_MOUNTS:
            quotas += _v1_quota(root / mount)
    return min(quotas, default=None)


def _upwards(base: Path, path: str) -> list[Path]:
    """*base* joined with *path*, and each of its parents up to *base*."""
    parts = [part for part in path.split("/") if part not in ("", ".", "..")]
    return [base.joinpath(*parts[:end]) for end in range(len(parts), -1, -1)]


def _v1_quota(folder: Path) -> list[int]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return _cpus(quota, period)


def _v2_quota(cpu_max: Path) -> list[int]:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return [] if quota == "max" else _cpus(int(quota), int(period))
    except (OSError, ValueError):
        return []


def _cpus(quota: int, period: int) -> list[int]:
    """The CPUs *quota* microseconds per *period* allow, rounded up (none: no quota)."""
    return [max(1, math.ceil(quota / period))] if quota > 0 and period > 0 else []
