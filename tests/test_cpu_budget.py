"""The CPU budget: cgroup quotas (v1 and v2, nested, hybrid), affinity, and fallbacks, read from
fake /proc and cgroup trees built in a temporary folder, plus one reading of this machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.platform.cpu_budget import CpuBudget, detect_cpu_budget

# /proc/self/mountinfo lines as a host with both hierarchies (hybrid, like these machines) shows them.
V1_CPU_MOUNT = "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct"
V1_MEMORY_MOUNT = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
V2_MOUNT = "41 31 0:38 {root} {point} rw,relatime - cgroup2 cgroup2 rw"


def fake_host(root: Path, cgroup: str, mountinfo: list[str] | None) -> Path:
    """/proc/self/cgroup and (unless None) /proc/self/mountinfo below ``root``."""
    proc = root / "proc/self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    if mountinfo is not None:
        (proc / "mountinfo").write_text("\n".join(mountinfo) + "\n")
    return root


def v1_folder(root: Path, relative: str, quota: str, period: str = "100000") -> Path:
    folder = root / relative
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
    (folder / "cpu.cfs_period_us").write_text(period + "\n")
    return folder


def v2_folder(root: Path, relative: str, cpu_max: str | None) -> Path:
    folder = root / relative
    folder.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (folder / "cpu.max").write_text(cpu_max + "\n")
    return folder


# The cpuset line comes last, so a reader that took "cpuset" for "cpu" would read the wrong folder.
V1_CGROUP = "5:memory:/kubepods/pod1/ctr\n4:cpu,cpuacct:/kubepods/pod1/ctr\n3:cpuset:/\n0::/\n"


def test_v1_quota_of_a_container_whose_mount_shows_its_own_cgroup(tmp_path):
    """Kubernetes on cgroup v1 without a cgroup namespace: the path is the host's, the mount's
    root is the container's cgroup, so the quota file is right at the mount point."""
    fake_host(tmp_path, V1_CGROUP, [V1_CPU_MOUNT.format(root="/kubepods/pod1/ctr"), V1_MEMORY_MOUNT])
    v1_folder(tmp_path, "sys/fs/cgroup/cpu,cpuacct", "150000")
    budget = detect_cpu_budget(tmp_path, affinity_cpus=64, cpu_count=64)
    assert budget == CpuBudget(cpus=1.5, source="cgroup v1 quota", quota_cpus=1.5, affinity_cpus=64)
    assert budget.workers == 1 and budget.threads_per_worker(budget.workers) == 1


def test_v1_without_quota_uses_the_affinity(tmp_path):
    """cfs_quota_us of -1 is "no limit", as on this machine outside any container."""
    fake_host(tmp_path, V1_CGROUP, [V1_CPU_MOUNT.format(root="/kubepods/pod1/ctr")])
    v1_folder(tmp_path, "sys/fs/cgroup/cpu,cpuacct", "-1")
    budget = detect_cpu_budget(tmp_path, affinity_cpus=8, cpu_count=8)
    assert budget == CpuBudget(cpus=8.0, source="cpu count", quota_cpus=None, affinity_cpus=8)
    assert budget.workers == 8 and budget.threads_per_worker(8) == 1


def test_podman_cpus_1_on_a_two_core_host(tmp_path):
    """What ``podman run --cpus 1`` shows inside on these machines: quota = period = 100000."""
    fake_host(tmp_path, "2:cpu,cpuacct:/\n", [V1_CPU_MOUNT.format(root="/")])
    v1_folder(tmp_path, "sys/fs/cgroup/cpu,cpuacct", "100000")
    budget = detect_cpu_budget(tmp_path, affinity_cpus=2, cpu_count=2)
    assert (budget.cpus, budget.source, budget.workers) == (1.0, "cgroup v1 quota", 1)


def test_v1_nested_path_from_the_host_view_and_a_tighter_parent(tmp_path):
    """A mount of the whole hierarchy: the process's folder is the mount point plus its path,
    and a parent's smaller quota is the one that binds."""
    fake_host(tmp_path, V1_CGROUP, [V1_CPU_MOUNT.format(root="/")])
    hierarchy = "sys/fs/cgroup/cpu,cpuacct"
    v1_folder(tmp_path, hierarchy, "-1")
    v1_folder(tmp_path, f"{hierarchy}/kubepods", "-1")
    v1_folder(tmp_path, f"{hierarchy}/kubepods/pod1", "200000")
    v1_folder(tmp_path, f"{hierarchy}/kubepods/pod1/ctr", "400000")
    budget = detect_cpu_budget(tmp_path, affinity_cpus=16, cpu_count=16)
    assert (budget.cpus, budget.source) == (2.0, "cgroup v1 quota")
    assert budget.workers == 2 and budget.threads_per_worker(2) == 1


def test_v1_separate_cpu_mount_with_a_different_period(tmp_path):
    """The cpu controller mounted alone (as on these machines), and a 50 ms period."""
    mount = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu"
    fake_host(tmp_path, "1:cpu:/job\n2:cpuacct:/job\n", [mount])
    v1_folder(tmp_path, "sys/fs/cgroup/cpu/job", "150000", period="50000")
    assert detect_cpu_budget(tmp_path, affinity_cpus=4, cpu_count=4).cpus == 3.0


@pytest.mark.parametrize(
    ("cpu_max", "cpus", "source"),
    [
        ("max 100000", 4.0, "cpu count"),
        ("250000 100000", 2.5, "cgroup v2 quota"),
        ("50000 100000", 0.5, "cgroup v2 quota"),
    ],
)
def test_v2_cpu_max(tmp_path, cpu_max, cpus, source):
    """cgroup v2 with a cgroup namespace: the path is ``/`` and cpu.max sits at the mount point."""
    fake_host(tmp_path, "0::/\n", [V2_MOUNT.format(root="/", point="/sys/fs/cgroup")])
    v2_folder(tmp_path, "sys/fs/cgroup", cpu_max)
    budget = detect_cpu_budget(tmp_path, affinity_cpus=4, cpu_count=4)
    assert (budget.cpus, budget.source) == (cpus, source)
    assert budget.workers == max(1, int(cpus))


def test_v2_nested_path_reads_the_leaf_and_its_parents(tmp_path):
    """No cgroup namespace: the path is the host's, below a mount of the whole hierarchy."""
    path = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"
    fake_host(tmp_path, f"0::{path}\n", [V2_MOUNT.format(root="/", point="/sys/fs/cgroup")])
    v2_folder(tmp_path, "sys/fs/cgroup", None)  # the root cgroup has no cpu.max
    v2_folder(tmp_path, "sys/fs/cgroup/kubepods.slice", "max 100000")
    v2_folder(tmp_path, "sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice", "300000 100000")
    v2_folder(tmp_path, f"sys/fs/cgroup{path}", "max 100000")
    budget = detect_cpu_budget(tmp_path, affinity_cpus=32, cpu_count=32)
    assert budget == CpuBudget(3.0, "cgroup v2 quota", 3.0, 32)


def test_hybrid_host_prefers_the_v1_cpu_controller(tmp_path):
    """On hybrid hosts the v2 hierarchy exists but holds no CPU controller; v1's quota counts."""
    mounts = [
        V1_CPU_MOUNT.format(root="/"),
        V2_MOUNT.format(root="/", point="/sys/fs/cgroup/unified"),
    ]
    fake_host(tmp_path, "4:cpu,cpuacct:/\n0::/\n", mounts)
    v1_folder(tmp_path, "sys/fs/cgroup/cpu,cpuacct", "100000")
    v2_folder(tmp_path, "sys/fs/cgroup/unified", "max 100000")
    assert detect_cpu_budget(tmp_path, affinity_cpus=2, cpu_count=2).source == "cgroup v1 quota"


def test_a_mount_point_with_a_space_is_unescaped(tmp_path):
    mount = r"41 31 0:38 / /srv/cg\040root rw - cgroup2 cgroup2 rw"
    fake_host(tmp_path, "0::/app\n", [mount])
    v2_folder(tmp_path, "srv/cg root/app", "200000 100000")
    assert detect_cpu_budget(tmp_path, affinity_cpus=8, cpu_count=8).cpus == 2.0


def test_affinity_smaller_than_the_quota_wins(tmp_path):
    """A cpuset (or taskset) of 2 CPUs under a 4-CPU quota: only 2 CPUs can run the process."""
    fake_host(tmp_path, "0::/\n", [V2_MOUNT.format(root="/", point="/sys/fs/cgroup")])
    v2_folder(tmp_path, "sys/fs/cgroup", "400000 100000")
    budget = detect_cpu_budget(tmp_path, affinity_cpus=2, cpu_count=64)
    assert budget == CpuBudget(2.0, "affinity", 4.0, 2)
    assert budget.workers == 2


def test_without_mountinfo_the_usual_mount_points_are_tried(tmp_path):
    fake_host(tmp_path, "3:cpu,cpuacct:/\n", mountinfo=None)
    v1_folder(tmp_path, "sys/fs/cgroup/cpu,cpuacct", "300000")
    assert detect_cpu_budget(tmp_path, affinity_cpus=8, cpu_count=8).cpus == 3.0

    v2_root = tmp_path / "v2"
    fake_host(v2_root, "0::/\n", mountinfo=None)
    v2_folder(v2_root, "sys/fs/cgroup", "100000 100000")
    assert detect_cpu_budget(v2_root, affinity_cpus=8, cpu_count=8).cpus == 1.0


def test_a_path_outside_the_mount_root_falls_back_to_the_mount_point(tmp_path):
    """A process whose cgroup is not below what the mount shows (moved, or outside a namespace):
    the mount point is the only cgroup visible, so its quota is the one read."""
    fake_host(tmp_path, "0::/../other\n", [V2_MOUNT.format(root="/", point="/sys/fs/cgroup")])
    v2_folder(tmp_path, "sys/fs/cgroup", "200000 100000")
    v2_folder(tmp_path, "sys/fs/other", "100000 100000")  # must never be reached through ".."
    assert detect_cpu_budget(tmp_path, affinity_cpus=8, cpu_count=8).cpus == 2.0


@pytest.mark.parametrize(
    ("files", "cgroup"),
    [
        ({"cpu.cfs_quota_us": "lots", "cpu.cfs_period_us": "100000"}, "4:cpu:/\n"),
        ({"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "0"}, "4:cpu:/\n"),
        ({"cpu.cfs_quota_us": "100000"}, "4:cpu:/\n"),
        ({"cpu.max": "100000"}, "0::/\n"),
        ({"cpu.max": "-5 100000"}, "0::/\n"),
        ({"cpu.max": b"\xff\xfe\x00"}, "0::/\n"),
        ({}, "garbage without colons\n::\n4:cpu:relative/path\n"),
    ],
)
def test_garbage_falls_back_to_the_affinity_without_raising(tmp_path, files, cgroup):
    mounts = [
        "not a mountinfo line",
        "1 2 3 - cgroup",
        V1_CPU_MOUNT.format(root="/"),
        V2_MOUNT.format(root="/", point="/sys/fs/cgroup/unified"),
    ]
    fake_host(tmp_path, cgroup, mounts)
    for folder in ("sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/unified"):
        (tmp_path / folder).mkdir(parents=True)
        for name, content in files.items():
            path = tmp_path / folder / name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    assert detect_cpu_budget(tmp_path, affinity_cpus=3, cpu_count=4) == CpuBudget(3.0, "affinity", None, 3)


def test_nothing_readable_at_all_gives_the_cpu_count(tmp_path):
    assert detect_cpu_budget(tmp_path / "missing", affinity_cpus=6, cpu_count=6).source == "cpu count"


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(0.25, 1, 1), (1.0, 1, 1), (1.99, 1, 1), (2.0, 2, 1), (4.0, 2, 2), (6.5, 3, 2)],
)
def test_worker_and_thread_rounding(cpus, workers, threads):
    """Whole CPUs, rounded down, at least one; threads split the whole CPUs over the workers."""
    budget = CpuBudget(cpus, "cgroup v2 quota", cpus, 64)
    assert budget.workers == max(1, int(cpus))
    assert budget.threads_per_worker(workers) == threads


def test_this_machine():
    """On the real /proc and /sys: a whole or fractional CPU count between 1 and the CPU count."""
    budget = detect_cpu_budget()
    assert 1 <= budget.workers <= (os.cpu_count() or 1)
    assert budget.affinity_cpus == len(os.sched_getaffinity(0))
    assert 0 < budget.cpus <= (os.cpu_count() or 1)
