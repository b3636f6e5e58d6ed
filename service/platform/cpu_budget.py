"""How many CPUs this process may really use: the cgroup CPU quota, the CPU affinity, the CPU count.

``os.cpu_count()`` counts the node's CPUs, not the container's: in a pod limited to 1 CPU on a
64-core node it says 64. The limit a container runtime or Kubernetes sets is a CFS quota in the
process's cgroup (cgroup v2 ``cpu.max``, cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``),
and a cpuset shows up as the process's CPU affinity. This module reads both, with the standard
library only, and never raises: anything it cannot read or parse counts as "no limit there".

Finding the cgroup, as the JDK and Go's runtime do:

1. ``/proc/self/cgroup`` names the process's cgroup per hierarchy. A cgroup v1 line whose
   controllers include ``cpu`` wins (on hybrid hosts, as here, the CPU controller is on the v1
   hierarchy and the v2 one holds no controllers); otherwise the v2 line ``0::<path>``.
2. ``/proc/self/mountinfo`` says where that hierarchy is mounted and which of its folders the
   mount shows (its root). The process's folder is ``<mount point>/<path less the mount root>``.
   Inside a container the mount usually shows the container's own cgroup as its root (or a cgroup
   namespace makes the path ``/``), so the folder is the mount point itself.
3. Without a readable mountinfo, the usual mount points are tried: ``/sys/fs/cgroup/cpu,cpuacct``,
   ``/sys/fs/cgroup/cpu`` (v1) and ``/sys/fs/cgroup`` (v2).

Unlike Go's runtime, which reads only the leaf cgroup, every folder from the process's up to the
mount point is read and the smallest quota wins (as the JDK does since JDK 23): a parent's tighter
quota limits its children too. Container runtimes usually hide the parents, so this rarely matters.

Every file is read below ``root`` (default ``/``), so tests build fake cgroup trees in a temporary
folder; the affinity and CPU count can be given as well.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Where cgroup hierarchies are usually mounted, tried when /proc/self/mountinfo says nothing usable.
_V1_CPU_MOUNTS = ("sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpu")
_V2_MOUNT = "sys/fs/cgroup"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use, and where that number came from.

    ``cpus`` is the smaller of the cgroup quota and the affinity; it may be fractional (a quota
    of 1.5 CPUs). ``source`` is ``"cgroup v1 quota"``, ``"cgroup v2 quota"``, ``"affinity"`` or
    ``"cpu count"``: the one that set ``cpus``.
    """

    cpus: float
    source: str
    quota_cpus: float | None
    affinity_cpus: int

    @property
    def workers(self) -> int:
        """Worker processes for this budget: the whole CPUs, rounded down, at least 1.

        Rounded down because a CFS quota is enforced per period (100 ms by default): two busy
        workers under a 1.5-CPU quota use up the period's 150 ms of CPU time in 75 ms and are
        then both frozen for the remaining 25 ms, a stall every request in flight waits out.
        One worker never hits the quota, and the half CPU left over serves the process's other
        threads (the forecaster's inference thread, garbage collection, the supervisor).
        Kubernetes CPU limits for this service are best whole numbers for the same reason.
        """
        return max(1, math.floor(self.cpus + 1e-9))

    def threads_per_worker(self, workers: int) -> int:
        """ONNX Runtime intra-op threads per session when ``workers`` processes share the budget.

        The whole CPUs divided evenly over the workers, rounded down, at least 1: more threads
        than CPUs only take turns on them (and, under a quota, hit it sooner).
        """
        return max(1, math.floor(self.cpus + 1e-9) // max(1, workers))


def detect_cpu_budget(
    root: Path | str = "/", affinity_cpus: int | None = None, cpu_count: int | None = None
) -> CpuBudget:
    """The CPU budget of this process, read from the files below ``root``.

    ``affinity_cpus`` and ``cpu_count`` default to ``os.sched_getaffinity(0)`` and
    ``os.cpu_count()``. Never raises: an unreadable or malformed cgroup means no quota.
    """
    root = Path(root)
    cpus_online = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if affinity_cpus is None:
        affinity_cpus = _affinity(cpus_online)
    found = _cgroup_quota(root)
    quota_cpus, version = found if found else (None, "")
    if quota_cpus is not None and quota_cpus <= affinity_cpus:
        return CpuBudget(quota_cpus, f"cgroup {version} quota", quota_cpus, affinity_cpus)
    source = "affinity" if affinity_cpus < cpus_online else "cpu count"
    return CpuBudget(float(affinity_cpus), source, quota_cpus, affinity_cpus)


def _affinity(cpus_online: int) -> int:
    """CPUs this process may be scheduled on (a cpuset or ``taskset`` narrows it)."""
    try:
        return len(os.sched_getaffinity(0)) or cpus_online
    except (AttributeError, OSError):  # not on Linux
        return cpus_online


def _cgroup_quota(root: Path) -> tuple[float, str] | None:
    """The tightest CPU quota over the process's cgroup and its parents, and the cgroup version."""
    membership = _read_membership(root)
    if "v1" in membership:
        folders = _cgroup_folders(root, membership["v1"], "v1")
        quota = _tightest(folders, _read_v1_quota)
        return (quota, "v1") if quota is not None else None
    if "v2" in membership:
        folders = _cgroup_folders(root, membership["v2"], "v2")
        quota = _tightest(folders, _read_v2_quota)
        return (quota, "v2") if quota is not None else None
    return None


def _read_membership(root: Path) -> dict[str, str]:
    """The process's cgroup path on the v1 CPU hierarchy and on the v2 one, from /proc/self/cgroup.

    Each line is ``<hierarchy id>:<controllers>:<path>``; v2's is ``0::<path>``.
    """
    text = _read_text(root / "proc/self/cgroup")
    membership: dict[str, str] = {}
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hierarchy, controllers, path = parts
        if "cpu" in controllers.split(","):
            membership["v1"] = path
        elif hierarchy == "0" and controllers == "":
            membership["v2"] = path
    return membership


def _cgroup_folders(root: Path, cgroup_path: str, version: str) -> list[Path]:
    """The process's cgroup folder and its parents up to the mount point, leaf first."""
    mount = _find_mount(root, cgroup_path, version)
    if mount is None:
        return []
    mount_point, mount_root = mount
    relative = _relative_to_mount(cgroup_path, mount_root)
    leaf = mount_point.joinpath(*relative.parts) if relative is not None else mount_point
    if not leaf.is_dir():  # a path from outside a cgroup namespace: the mount shows our own cgroup
        leaf = mount_point
    folders = [leaf]
    while folders[-1] != mount_point and mount_point in folders[-1].parents:
        folders.append(folders[-1].parent)
    return folders


def _relative_to_mount(cgroup_path: str, mount_root: str) -> PurePosixPath | None:
    """``cgroup_path`` below ``mount_root``, or None when it is not below it."""
    try:
        relative = PurePosixPath(cgroup_path).relative_to(PurePosixPath(mount_root))
    except ValueError:
        return None
    return None if ".." in relative.parts else relative


def _find_mount(root: Path, cgroup_path: str, version: str) -> tuple[Path, str] | None:
    """(mount point below ``root``, the cgroup folder it shows) of the hierarchy to read."""
    mounts = _read_mounts(root, version)
    # Several mounts of one hierarchy (bind mounts): prefer one that shows the process's cgroup.
    for mount_point, mount_root in mounts:
        if _relative_to_mount(cgroup_path, mount_root) is not None:
            return mount_point, mount_root
    if mounts:
        return mounts[0]
    fallbacks = _V1_CPU_MOUNTS if version == "v1" else (_V2_MOUNT,)
    for candidate in fallbacks:
        if (root / candidate).is_dir():
            # Unknown mount root: assume the whole hierarchy, as a host's /sys/fs/cgroup shows.
            return root / candidate, "/"
    return None


def _read_mounts(root: Path, version: str) -> list[tuple[Path, str]]:
    """The cgroup mounts of one version from /proc/self/mountinfo: (mount point, mount root).

    A line is ``id parent major:minor root mount-point options [optional...] - fstype source
    super-options``; spaces in paths are written as ``\\040``.
    """
    text = _read_text(root / "proc/self/mountinfo")
    mounts = []
    for line in (text or "").splitlines():
        before, separator, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, super_options = tail[0], tail[2].split(",")
        wanted = (fstype == "cgroup" and "cpu" in super_options) if version == "v1" else fstype == "cgroup2"
        if wanted:
            mount_point = _unescape(fields[4]).lstrip("/")
            mounts.append((root / mount_point, _unescape(fields[3])))
    return mounts


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ``\\011`` for a tab, ...)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def _tightest(folders: list[Path], read_quota: Callable[[Path], float | None]) -> float | None:
    """The smallest quota (in CPUs) set in any of ``folders``; None when none sets one."""
    quotas = [quota for folder in folders if (quota := read_quota(folder)) is not None]
    return min(quotas, default=None)


def _read_v1_quota(folder: Path) -> float | None:
    """cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in CPUs; -1 means no limit."""
    quota = _read_int(folder / "cpu.cfs_quota_us")
    period = _read_int(folder / "cpu.cfs_period_us")
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return quota / period


def _read_v2_quota(folder: Path) -> float | None:
    """cgroup v2: ``cpu.max`` is ``<quota> <period>`` in microseconds, or ``max <period>``."""
    fields = (_read_text(folder / "cpu.max") or "").split()
    if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
        return None  # "max ..." (no limit), missing or malformed
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def _read_int(path: Path) -> int | None:
    text = (_read_text(path) or "").strip()
    try:
        return int(text)
    except ValueError:
        return None


def _read_text(path: Path) -> str | None:
    """A small kernel file's text, or None when it cannot be read (missing, permissions, binary)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
