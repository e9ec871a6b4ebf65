"""Usable CPUs: affinity, cgroup quotas (v1 and v2, with ancestors), the reserve."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiflow import cpus


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("", None)],
)
def test_cpu_max(text: str, expected: float | None) -> None:
    assert cpus.parse_cpu_max(text) == expected


def test_v1_quota() -> None:
    assert cpus.parse_v1_quota("-1\n", "100000\n") is None
    assert cpus.parse_v1_quota("200000\n", "100000\n") == 2.0


@pytest.mark.parametrize(
    ("affinity", "quota", "reserve", "expected"),
    [
        (16, None, 0, 16),
        (16, 2.0, 0, 2),
        (16, 1.5, 0, 1),  # a fraction of a CPU only throttles another thread
        (16, 0.5, 0, 1),
        (4, 8.0, 1, 3),
        (2, None, 5, 1),
    ],
)
def test_combine(affinity: int, quota: float | None, reserve: int, expected: int) -> None:
    assert cpus.combine(affinity, quota, reserve) == expected


def _fake_proc(tmp_path: Path, mountinfo: str, cgroup: str) -> tuple[Path, Path]:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(cgroup)
    return tmp_path / "mountinfo", tmp_path / "cgroup"


def test_cgroup_v2_takes_the_tightest_limit_up_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    group = root / "kubepods" / "pod1" / "ctr"
    group.mkdir(parents=True)
    (root / "kubepods" / "cpu.max").write_text("400000 100000\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text("250000 100000\n")
    (group / "cpu.max").write_text("max 100000\n")
    mountinfo, cgroup = _fake_proc(
        tmp_path,
        f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n",
        "0::/kubepods/pod1/ctr\n",
    )
    assert cpus.cgroup_quota(mountinfo, cgroup) == 2.5


def test_cgroup_v1_cpu_controller(tmp_path: Path) -> None:
    mount = tmp_path / "cpu,cpuacct"
    group = mount / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("300000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    mountinfo, cgroup = _fake_proc(
        tmp_path,
        f"40 25 0:35 / {mount} rw - cgroup cgroup rw,cpu,cpuacct\n"
        f"41 25 0:36 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory\n",
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
    )
    assert cpus.cgroup_quota(mountinfo, cgroup) == 3.0


def test_a_container_sees_its_own_group_as_the_mount_root(tmp_path: Path) -> None:
    mount = tmp_path / "cpu"
    mount.mkdir()
    (mount / "cpu.cfs_quota_us").write_text("100000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    mountinfo, cgroup = _fake_proc(
        tmp_path,
        f"40 25 0:35 /docker/abc {mount} rw - cgroup cgroup rw,cpu\n",
        "3:cpu:/docker/abc\n",
    )
    assert cpus.cgroup_quota(mountinfo, cgroup) == 1.0


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cpus.cgroup_quota(tmp_path / "missing", tmp_path / "missing") is None


def test_usable_cpus_is_within_the_affinity_and_at_least_one() -> None:
    usable = cpus.usable_cpus()
    assert 1 <= usable <= cpus.affinity_cpus()
    assert cpus.usable_cpus(reserve=1000) == 1
