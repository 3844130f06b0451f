"""A throwaway one-node Slurm cluster (munged, slurmctld, slurmd) with all its state in a temp
dir: for the tests and bench. `make test` installs the daemons (scripts/test-setup.sh)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
PARTITION = "jobs"

CONF = """\
ClusterName=jobnest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={base}/jobcomp.txt
MinJobAge=300
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


CGROUP_CONF = """\
CgroupPlugin=cgroup/v1
ConstrainCores=yes
ConstrainRAMSpace=yes
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mib() -> int:
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return total // 1024 * 3 // 4  # what slurmd will find, with room: a node claiming more is drained


@contextlib.contextmanager
def cluster(cpus: int | None = None) -> Iterator[Path]:
    """The slurm.conf of a running cluster (for SLURM_CONF), while the block runs."""
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        raise RuntimeError("Slurm is missing; run scripts/test-setup.sh (make test does)")
    if os.getuid() != 0:
        raise RuntimeError("the test cluster's slurmd runs as root")
    base = Path(tempfile.mkdtemp(prefix="jobnest-slurm-"))
    for folder in ("state", "spool"):
        (base / folder).mkdir()
    conf = base / "slurm.conf"
    (base / "cgroup.conf").write_text(CGROUP_CONF)  # memory enforced: a job over --mem ends OUT_OF_MEMORY
    conf.write_text(CONF.format(host=socket.gethostname(), ctld_port=_free_port(), d_port=_free_port(), base=base,
                                cpus=cpus or os.cpu_count() or 1, memory=_memory_mib(),
                                partition=PARTITION))
    started_munge = _start_munge()
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
        _wait_idle(env, base)
        yield conf
    finally:
        for daemon in ("slurmd", "slurmctld"):
            _stop(base / f"{daemon}.pid")
        if started_munge:
            _stop(Path("/run/munge/munged.pid"))
        shutil.rmtree(base, ignore_errors=True)
        for left in Path("/sys/fs/cgroup").glob("*/slurm*"):  # what the cgroup plugins leave
            for folder in sorted(left.rglob("*"), reverse=True) + [left]:
                if folder.is_dir():
                    with contextlib.suppress(OSError):
                        folder.rmdir()


def stop_controller(conf: Path) -> None:
    """Stop slurmctld (its nodes and their jobs go on), as when Slurm's controller is down."""
    _stop(conf.parent / "slurmctld.pid")


def start_controller(conf: Path) -> None:
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env={**os.environ, "SLURM_CONF": str(conf)})


@contextlib.contextmanager
def partition_down(conf: Path) -> Iterator[None]:
    """The test partition takes jobs but starts none while the block runs."""
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["scontrol", "update", f"PartitionName={PARTITION}", "State=DOWN"], check=True, env=env)
    try:
        yield
    finally:
        subprocess.run(["scontrol", "update", f"PartitionName={PARTITION}", "State=UP"], check=True, env=env)


def cancel_all(conf: Path) -> None:
    """Cancel every job of the cluster: what one test left must not hold up the next."""
    subprocess.run(["scancel", "--user", "root"], env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True)


def _start_munge() -> bool:
    """Start munged unless one answers; returns whether it was started here."""
    if MUNGE_SOCKET.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return False
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force"], check=True)
    return True


def _wait_idle(env: dict[str, str], base: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
        if state == "idle":
            return
        time.sleep(0.2)
    logs = "".join((base / f"{d}.log").read_text()[-2000:] for d in ("slurmctld", "slurmd")
                   if (base / f"{d}.log").exists())
    raise RuntimeError(f"the test Slurm cluster did not come up idle; its logs end:\n{logs}")


def _stop(pid_file: Path, timeout: float = 3) -> None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
