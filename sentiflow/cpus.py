"""How many CPUs this process may actually keep busy.

``os.cpu_count()`` counts the host's CPUs, which inside a container or a pinned process
is far more than the process gets: a pool sized by it oversubscribes the cores it has,
and its threads wait on each other (and on the CPU quota) instead of working. The usable
count is the smaller of the CPUs the scheduler lets the process run on
(``sched_getaffinity``) and the CPU bandwidth its cgroup grants (cgroup v2 ``cpu.max``,
or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), the tightest limit on the way up
the hierarchy winning.

A fractional quota is rounded down (at least one): threads beyond the quota only get
throttled together at the end of each period, which shows up as latency spikes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CgroupMount",
    "affinity_cpus",
    "cgroup_quota",
    "combine",
    "parse_cpu_max",
    "parse_v1_quota",
    "usable_cpus",
]


@dataclass(frozen=True)
class CgroupMount:
    """Where a cgroup hierarchy is mounted, and the process's own group inside it."""

    mount_point: Path
    root: str  # the hierarchy path that the mount point shows
    group: str  # this process's group, as /proc/self/cgroup names it
    version: int  # 1 or 2


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` line ("max 100000" means no limit)."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def parse_v1_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs granted by cgroup v1 CFS settings (a quota of -1 means no limit)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _mounts(mountinfo: Iterable[str], proc_cgroup: Iterable[str]) -> list[CgroupMount]:
    """The cgroup hierarchies that can limit CPU time, with this process's group in each."""
    groups_v1: dict[str, str] = {}
    group_v2: str | None = None
    for line in proc_cgroup:
        parts = line.rstrip("\n").split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and controllers == "":
            group_v2 = path
        for controller in controllers.split(","):
            groups_v1[controller] = path
    found: list[CgroupMount] = []
    for line in mountinfo:
        # "36 35 98:0 /root /mnt rw,noatime master:1 - cgroup cgroup rw,cpu,cpuacct"
        left, sep, right = line.rstrip("\n").partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype = fields[3], Path(fields[4]), tail[0]
        if fstype == "cgroup2" and group_v2 is not None:
            found.append(CgroupMount(mount_point, root, group_v2, 2))
        elif fstype == "cgroup" and "cpu" in tail[2].split(",") and "cpu" in groups_v1:
            found.append(CgroupMount(mount_point, root, groups_v1["cpu"], 1))
    return found


def _group_dirs(mount: CgroupMount) -> list[Path]:
    """The process's group directory and its ancestors up to the mount point."""
    group = mount.group
    if mount.root != "/" and group.startswith(mount.root):
        group = group[len(mount.root) :]
    parts = [p for p in group.split("/") if p]
    return [mount.mount_point.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _dir_quota(directory: Path, version: int) -> float | None:
    if version == 2:
        text = _read(directory / "cpu.max")
        return parse_cpu_max(text) if text is not None else None
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return parse_v1_quota(quota, period)


def cgroup_quota(
    mountinfo: Path = Path("/proc/self/mountinfo"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The tightest CPU bandwidth limit on this process's cgroups, in CPUs; None: none."""
    info, groups = _read(mountinfo), _read(proc_cgroup)
    if info is None or groups is None:
        return None
    limits = [
        quota
        for mount in _mounts(info.splitlines(), groups.splitlines())
        for directory in _group_dirs(mount)
        if (quota := _dir_quota(directory, mount.version)) is not None
    ]
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def combine(affinity: int, quota: float | None, reserve: int = 0) -> int:
    """Usable CPUs from the two limits, less ``reserve`` for co-located work; at least 1."""
    cpus = affinity if quota is None else min(affinity, max(1, math.floor(quota)))
    return max(1, cpus - max(0, reserve))


def usable_cpus(reserve: int = 0) -> int:
    """CPUs this process can keep busy, less ``reserve`` (never below one)."""
    return combine(affinity_cpus(), cgroup_quota(), reserve)
