"""Enforcing a run's cpu share with Linux cgroups, v2 or v1, where the machine lets us.

The local executor asks for a cgroup per run; when none can be made the run still starts, and
the run records that its share was not enforced.
"""

import os
from pathlib import Path

PERIOD_US = 100_000


class CpuLimiter:
    def __init__(self, root: str = "/sys/fs/cgroup", group: str = "jobnest") -> None:
        self.base: Path | None = None
        self.v2 = False
        unified = Path(root)
        if "cpu" in _read(unified / "cgroup.controllers").split():
            self.v2, self.base = True, unified / group
        elif (unified / "cpu" / "cpu.cfs_quota_us").exists():
            self.base = unified / "cpu" / group
        if self.base is not None:
            try:
                self.base.mkdir(exist_ok=True)
                if self.v2:
                    (unified / "cgroup.subtree_control").write_text("+cpu")
                    (self.base / "cgroup.subtree_control").write_text("+cpu")
            except OSError:
                self.base = None

    @property
    def available(self) -> bool:
        return self.base is not None

    def create(self, name: str, cpu_millis: int) -> str | None:
        """A cgroup limited to `cpu_millis`; returns the file a process writes its pid to, or None."""
        if self.base is None:
            return None
        path = self.base / name
        quota = max(1000, cpu_millis * PERIOD_US // 1000)
        try:
            path.mkdir(exist_ok=True)
            if self.v2:
                (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:  # the period is the kernel's default, PERIOD_US
                (path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError:
            return None
        return str(path / "cgroup.procs")

    def remove(self, name: str) -> None:
        if self.base is not None:
            try:
                os.rmdir(self.base / name)
            except OSError:
                pass  # still has processes, or already gone


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
