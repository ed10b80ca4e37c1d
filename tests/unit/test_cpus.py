"""The CPUs a service may use (the default ``max_workers``): affinity and cgroup CPU quotas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.server.cpus import cpu_quota, usable_cpus


def cgroups(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup mount (*files* by path under it) and a fake ``/proc/self/cgroup``."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    listing = tmp_path / "self-cgroup"
    listing.write_text(own)
    return root, listing


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("100000 100000\n", 1), ("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)],
)
def test_a_cgroup_v2_quota_is_rounded_up(tmp_path: Path, cpu_max: str, cpus: int | None) -> None:
    root, own = cgroups(tmp_path, "0::/\n", {"cpu.max": cpu_max})
    assert cpu_quota(root, own) == cpus


def test_the_smallest_quota_of_the_cgroup_and_those_above_counts(tmp_path: Path) -> None:
    files = {
        "cpu.max": "max 100000\n",
        "kubepods/cpu.max": "800000 100000\n",
        "kubepods/pod1/cpu.max": "200000 100000\n",
        "kubepods/pod1/app/cpu.max": "max 100000\n",
    }
    root, own = cgroups(tmp_path, "0::/kubepods/pod1/app\n", files)
    assert cpu_quota(root, own) == 2


def test_a_cgroup_v1_quota_is_read_and_minus_one_is_none(tmp_path: Path) -> None:
    files = {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    }
    listing = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    root, own = cgroups(tmp_path, listing, files)
    assert cpu_quota(root, own) == 3
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(root, own) is None


def test_no_cgroup_files_no_quota(tmp_path: Path) -> None:
    root, own = cgroups(tmp_path, "0::/nowhere\n", {"cpu.max": "garbage"})
    assert cpu_quota(root, own) is None
    assert cpu_quota(tmp_path / "absent", tmp_path / "absent-too") is None


def test_a_quota_caps_the_cpus(tmp_path: Path) -> None:
    root, own = cgroups(tmp_path, "0::/\n", {"cpu.max": "100000 100000\n"})
    assert usable_cpus(root, own) == 1
    root, own = cgroups(tmp_path / "big", "0::/\n", {"cpu.max": "6400000 100000\n"})
    assert usable_cpus(root, own) == len(os.sched_getaffinity(0))


def test_the_cpus_are_those_the_process_may_run_on() -> None:
    # os.cpu_count() counted the machine's CPUs, whatever the process's affinity.
    code = (
        "import os\n"
        "from dispatcher.server.cpus import usable_cpus\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "print(usable_cpus())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout == "1\n"
