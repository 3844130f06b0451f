"""A cgroup per local run, v2 or v1, where the machine lets us: its cpu share, a cap on its
processes, and a way to find every process of the run (one that called setsid() too).

The local executor asks for a cgroup per run; when none can be made the run still starts, and
the run records that its share was not enforced.
"""

import os
import time
from pathlib import Path

PERIOD_US = 100_000
MAX_PIDS = 4096  # processes and threads a run may have at once: a fork bomb stays in its run


class CpuLimiter:
    def __init__(self, root: str = "/sys/fs/cgroup", group: str = "jobnest", max_pids: int = MAX_PIDS) -> None:
        self.base: Path | None = None
        self.pids_base: Path | None = None  # cgroup v1 keeps pids in a hierarchy of its own
        self.max_pids = max_pids
        self.v2 = False
        unified = Path(root)
        controllers = _read(unified / "cgroup.controllers").split()
        if "cpu" in controllers:
            self.v2, self.base = True, unified / group
        elif (unified / "cpu" / "cpu.cfs_quota_us").exists():
            self.base = unified / "cpu" / group
            if (unified / "pids" / "pids.max").exists() or (unified / "pids" / "cgroup.procs").exists():
                self.pids_base = unified / "pids" / group
        if self.base is not None:
            try:
                self.base.mkdir(exist_ok=True)
                if self.v2:
                    wanted = "+cpu" + (" +pids" if "pids" in controllers else "")
                    (unified / "cgroup.subtree_control").write_text(wanted)
                    (self.base / "cgroup.subtree_control").write_text(wanted)
                elif self.pids_base is not None:
                    self.pids_base.mkdir(exist_ok=True)
            except OSError:
                self.base = self.pids_base = None
            self._tidy()

    @property
    def available(self) -> bool:
        return self.base is not None

    def _groups(self, name: str) -> list[Path]:
        return [base / name for base in (self.base, self.pids_base) if base is not None]

    def create(self, name: str, cpu_millis: int) -> str | None:
        """A cgroup limited to `cpu_millis` and `max_pids`; returns the files a process writes its
        pid to (separated by spaces), or None."""
        if self.base is None:
            return None
        quota = max(1000, cpu_millis * PERIOD_US // 1000)
        try:
            for path in self._groups(name):
                path.mkdir(exist_ok=True)
            cpu = self.base / name
            if self.v2:
                (cpu / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:  # the period is the kernel's default, PERIOD_US
                (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            pids = (self.pids_base or self.base) / name / "pids.max"
            if pids.exists():
                pids.write_text(str(self.max_pids))
        except OSError:
            return None
        return " ".join(str(path / "cgroup.procs") for path in self._groups(name))

    def members(self, name: str) -> list[int]:
        """The processes in the run's cgroup, wherever they went (their own session included)."""
        if self.base is None:
            return []
        return [int(pid) for pid in _read(self.base / name / "cgroup.procs").split()]

    def kill(self, name: str, sig: int) -> None:
        for pid in self.members(name):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self, name: str) -> None:
        for path in self._groups(name):
            try:
                os.rmdir(path)
            except OSError:
                pass  # still has processes, or already gone

    def _tidy(self) -> None:
        """Remove the empty cgroups of runs that ended while no controller ran (not one another
        controller has just made)."""
        old = time.time() - 3600
        for base in (self.base, self.pids_base):
            if base is None:
                continue
            try:
                for entry in os.scandir(base):
                    if entry.is_dir() and entry.stat().st_mtime < old and not _read(Path(entry.path) / "cgroup.procs").strip():
                        try:
                            os.rmdir(entry.path)
                        except OSError:
                            pass
            except OSError:
                pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""

