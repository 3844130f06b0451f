"""The controller's settings, in groups; each field is also a `jobnest controller` flag and a
`JOBNEST_*` variable (see `__main__.py`), and the Helm values mirror the same groups."""

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_home() -> str:
    return os.environ.get("JOBNEST_HOME") or str(Path.home() / ".jobnest")


def _memory_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


@dataclass
class ServerSettings:
    socket: str = ""
    """The owner's unix socket; guarded by its file mode (0600), so calls on it need no token."""
    jobs_socket: str = ""
    """The unix socket local jobs are given; every call on it needs a token. In a folder of its own,
    which a confined local job sees (see `confine.Sandbox`)."""
    listen: str = ""
    """host:port to also serve on over TCP, where every call needs a token; empty: none."""
    admin_token: str = ""
    """Bootstrap token with full rights on TCP; `jobnest token create` makes the rest."""
    advertise: str = ""
    """The address given to jobs as JOBNEST_CONTROLLER; defaults to the jobs' socket."""


@dataclass
class StoreSettings:
    url: str = ""
    """SQLAlchemy URL: sqlite:///path (the default, in the home) or postgresql://..."""


@dataclass
class NodeSettings:
    cpu_millis: int = field(default_factory=lambda: (os.cpu_count() or 1) * 1000)
    """The local node's capacity in millicores (cores x 1000); never over-committed."""
    memory: int = field(default_factory=_memory_total)
    """The local node's memory capacity in bytes."""
    cgroups: bool = True
    """Enforce each run's cpu share with cgroups where the machine allows it."""
    sandbox: bool = True
    """Confine local jobs (`confine.Sandbox`) where the machine allows it."""


@dataclass
class KubernetesSettings:
    namespace: str = ""
    """Namespace to run Pods in; empty: no Kubernetes executor."""
    kubeconfig: str = ""
    """Kubeconfig file; empty: the in-cluster service account, else ~/.kube/config."""
    pvc: str = ""
    """PersistentVolumeClaim holding the controller's home: Pods mount their output, inputs and
    program from it (empty: none, for runs that need no data)."""
    service_account: str = ""
    """Service account for job Pods; empty: the namespace's default."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Labels a node must have to run job Pods."""
    cpu_quota_millis: int = 8000
    """Cluster quota: total cpu of the runs in flight, in millicores."""
    memory_quota: int = 32 * 2**30
    """Cluster quota: total memory of the runs in flight, in bytes."""


@dataclass
class SlurmSettings:
    partition: str = ""
    """Slurm partition to run jobs in; empty: no Slurm executor."""
    conf: str = ""
    """The slurm.conf Slurm's commands read (SLURM_CONF); empty: Slurm's own default."""
    block_cpus: int = 1
    """CPUs of one block: a Slurm job that runs several runs smaller than a core, each with its share."""
    block_idle: float = 5.0
    """Seconds a block waits for more runs once its last has ended, before it gives its CPUs back."""


@dataclass
class Settings:
    home: str = field(default_factory=default_home)
    """State folder: the socket, the SQLite store and the runs' work dirs."""
    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    default_executor: str = "local"
    """Executor for jobs that name none."""
    docker: list[str] = field(default_factory=lambda: ["auto"])
    """Docker Engine endpoints, one node each; "auto": the local engine if its socket exists."""
    idle_timeout: float = 0.0
    """Seconds without calls or live runs after which the controller exits; 0: never."""
    tick: float = 0.02
    """Seconds between reconciler passes while runs are live."""
    max_upload: int = 2**30
    """The most bytes one upload (a file or a folder sent as a job's input) may hold."""
    max_log: int = 2**30
    """The most bytes of stdout and stderr one run may write; past it the run is stopped and fails."""
    driver_lease: float = 60.0
    """Seconds a driver program's lease lasts; its SDK renews it every third of that. A driver
    not heard from for that long is marked failed ("driver lost"); its jobs go on."""
    retention: float = 0.0
    """Seconds finished work is kept: past it, what nothing needs is removed at start and hourly
    (as `jobnest gc --older-than` does, see `retention.py`); 0: kept until `jobnest gc`."""
    mount_roots: list[str] = field(default_factory=list)
    """Host folders under which a container job may mount its cwd (`mount_cwd`). Calls on the
    owner's socket may also mount folders under the owner's home folder; none by default on TCP."""

    def __post_init__(self) -> None:
        self.server.socket = self.server.socket or str(Path(self.home) / "controller.sock")
        self.server.jobs_socket = self.server.jobs_socket or str(Path(self.home) / "jobs" / "jobs.sock")
        self.store.url = self.store.url or f"sqlite:///{Path(self.home) / 'jobnest.db'}"
        local_engine = "/var/run/docker.sock"
        self.docker = [e for e in self.docker if e != "auto"] + (
            [f"unix://{local_engine}"] if "auto" in self.docker and Path(local_engine).exists() else [])
