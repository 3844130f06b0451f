"""`python -m jobnest_controller` (also `jobnest controller`): serve until stopped or idle.

Each flag also reads the `JOBNEST_*` variable named in its help.
"""

import fcntl
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from jobnest._client import parse_duration
from jobnest.errors import JobnestError

from .app import Controller
from .settings import (KubernetesSettings, NodeSettings, ServerSettings, Settings, SlurmSettings, StoreSettings,
                       default_home)


def _refuse_token_flag(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.BadParameter("a token on a command line is readable by every process of the machine: "
                                 "set JOBNEST_ADMIN_TOKEN or pass --admin-token-file", param_hint="--admin-token")


def _duration(text: str) -> float:
    try:
        return parse_duration(text) if text else 0.0
    except JobnestError as e:
        raise click.BadParameter(e.problem, param_hint="--retention") from None


@click.command()
@click.option("--home", envvar="JOBNEST_HOME", default=default_home, show_envvar=True,
              help="State folder: socket, SQLite store, run work dirs.")
@click.option("--socket", envvar="JOBNEST_SOCKET", default="", show_envvar=True, help="Unix socket path.")
@click.option("--listen", envvar="JOBNEST_LISTEN", default="", show_envvar=True,
              help="Also serve on TCP host:port (every call then needs a token).")
@click.option("--advertise", envvar="JOBNEST_ADVERTISE", default="", show_envvar=True,
              help="Controller address handed to jobs.")
@click.option("--admin-token-file", type=click.Path(exists=True, dir_okay=False), envvar="JOBNEST_ADMIN_TOKEN_FILE",
              default=None, show_envvar=True,
              help="File holding the bootstrap admin token for TCP (or set JOBNEST_ADMIN_TOKEN). Never a flag: "
                   "every process of the machine can read a command line.")
@click.option("--admin-token", hidden=True, expose_value=False, callback=_refuse_token_flag)
@click.option("--mount-root", "mount_roots", multiple=True, envvar="JOBNEST_MOUNT_ROOTS", show_envvar=True,
              help="A host folder under which container jobs may mount their cwd (repeatable; the variable "
                   "takes a comma-separated list).")
@click.option("--store", "store_url", envvar="JOBNEST_STORE", default="", show_envvar=True,
              help="Store URL: sqlite:///path or postgresql://...")
@click.option("--cpu", type=float, envvar="JOBNEST_NODE_CPU", default=None, show_envvar=True,
              help="Local node capacity in cores (default: all).")
@click.option("--memory", type=int, envvar="JOBNEST_NODE_MEMORY", default=None, show_envvar=True,
              help="Local node memory capacity in bytes (default: all).")
@click.option("--no-sandbox", is_flag=True, envvar="JOBNEST_NO_SANDBOX", show_envvar=True,
              help="Do not confine local jobs (faster starts; for a controller only its owner uses).")
@click.option("--no-cgroups", is_flag=True, envvar="JOBNEST_NO_CGROUPS", show_envvar=True,
              help="Do not enforce cpu shares with cgroups.")
@click.option("--docker", "docker", multiple=True, envvar="JOBNEST_DOCKER", show_envvar=True,
              help="Docker Engine endpoint, one node each (repeatable; the variable takes a comma-separated "
                   "list); default: the local engine if it runs, 'none' for no Docker.")
@click.option("--executor", "default_executor", envvar="JOBNEST_EXECUTOR", default="local", show_envvar=True,
              help="Executor for jobs that name none.")
@click.option("--max-upload", type=click.IntRange(min=0), envvar="JOBNEST_MAX_UPLOAD", default=2**30,
              show_envvar=True, help="The most bytes one upload may hold.")
@click.option("--k8s-namespace", envvar="JOBNEST_K8S_NAMESPACE", default="", show_envvar=True,
              help="Run Pods in this Kubernetes namespace (enables the kubernetes executor).")
@click.option("--k8s-kubeconfig", envvar="JOBNEST_K8S_KUBECONFIG", default="", show_envvar=True,
              help="Kubeconfig file (default: the in-cluster service account, else ~/.kube/config).")
@click.option("--k8s-pvc", envvar="JOBNEST_K8S_PVC", default="", show_envvar=True,
              help="PersistentVolumeClaim holding --home, which job Pods mount their data from.")
@click.option("--k8s-service-account", envvar="JOBNEST_K8S_SERVICE_ACCOUNT", default="", show_envvar=True,
              help="Service account of job Pods.")
@click.option("--k8s-node-selector", envvar="JOBNEST_K8S_NODE_SELECTOR", default="", show_envvar=True,
              help="key=value[,key=value]: labels a node needs to run job Pods.")
@click.option("--k8s-cpu-quota", type=click.FloatRange(min=0.001), envvar="JOBNEST_K8S_CPU_QUOTA", default=8.0,
              show_envvar=True, help="Cores of Kubernetes runs in flight at most.")
@click.option("--k8s-memory-quota", type=click.IntRange(min=1), envvar="JOBNEST_K8S_MEMORY_QUOTA",
              default=32 * 2**30, show_envvar=True, help="Bytes of memory of Kubernetes runs in flight at most.")
@click.option("--slurm-partition", envvar="JOBNEST_SLURM_PARTITION", default="", show_envvar=True,
              help="Run jobs in this Slurm partition (enables the slurm executor; its nodes must share this file "
                   "system).")
@click.option("--slurm-conf", envvar="JOBNEST_SLURM_CONF", default="", show_envvar=True,
              help="The slurm.conf for Slurm's commands (default: Slurm's own, or SLURM_CONF).")
@click.option("--slurm-block-cpus", type=click.IntRange(min=1), envvar="JOBNEST_SLURM_BLOCK_CPUS", default=1,
              show_envvar=True, help="CPUs of a block, the Slurm job that runs several runs smaller than a core.")
@click.option("--slurm-block-idle", type=click.FloatRange(min=0), envvar="JOBNEST_SLURM_BLOCK_IDLE", default=5.0,
              show_envvar=True, help="Seconds an idle block waits for more runs before it gives its CPUs back.")
@click.option("--retention", envvar="JOBNEST_RETENTION", default="", show_envvar=True,
              help="Remove finished work nothing needs once older than this (12h, 30d), at start and hourly; "
                   "default: keep it until `jobnest gc`.")
@click.option("--idle-timeout", type=float, envvar="JOBNEST_IDLE_TIMEOUT", default=0.0, show_envvar=True,
              help="Exit after this many idle seconds (0: never).")
def main(home: str, socket: str, listen: str, advertise: str, admin_token_file: str | None,
         mount_roots: tuple[str, ...], store_url: str,
         cpu: float | None, memory: int | None, no_sandbox: bool, no_cgroups: bool, docker: tuple[str, ...], default_executor: str,
         max_upload: int, k8s_namespace: str, k8s_kubeconfig: str, k8s_pvc: str, k8s_service_account: str,
         k8s_node_selector: str, k8s_cpu_quota: float, k8s_memory_quota: int, slurm_partition: str,
         slurm_conf: str, slurm_block_cpus: int, slurm_block_idle: float, retention: str,
         idle_timeout: float) -> None:
    """Serve the jobnest controller."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = NodeSettings(cgroups=not no_cgroups, sandbox=not no_sandbox)
    if cpu is not None:
        if cpu <= 0:
            raise click.BadParameter("must be greater than 0", param_hint="--cpu")
        node.cpu_millis = round(cpu * 1000)
        if node.cpu_millis < 1:
            raise click.BadParameter("must be at least 0.001 cores", param_hint="--cpu")
    if memory is not None:
        node.memory = memory
    selector = {}
    for item in filter(None, k8s_node_selector.split(",")):
        key, _, value = item.partition("=")
        if not key or "=" not in item:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--k8s-node-selector")
        selector[key.strip()] = value.strip()
    kubernetes = KubernetesSettings(namespace=k8s_namespace, kubeconfig=k8s_kubeconfig, pvc=k8s_pvc,
                                    service_account=k8s_service_account, node_selector=selector,
                                    cpu_quota_millis=round(k8s_cpu_quota * 1000), memory_quota=k8s_memory_quota)
    admin_token = os.environ.pop("JOBNEST_ADMIN_TOKEN", "")  # nothing this process starts inherits it
    if admin_token_file:
        admin_token = Path(admin_token_file).read_text().strip()
    settings = Settings(home=home, server=ServerSettings(socket=socket, listen=listen, admin_token=admin_token,
                                                         advertise=advertise),
                        mount_roots=[r for item in mount_roots for r in item.split(",") if r],
                        store=StoreSettings(store_url), node=node, kubernetes=kubernetes,
                        slurm=SlurmSettings(partition=slurm_partition, conf=slurm_conf, block_cpus=slurm_block_cpus,
                                            block_idle=slurm_block_idle), idle_timeout=idle_timeout,
                        default_executor=default_executor, max_upload=max_upload, retention=_duration(retention),
                        docker=[e for item in docker for e in item.split(",") if e and e != "none"] if docker else ["auto"])
    Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(Path(home) / "controller.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"jobnest: a controller already serves {home}")
    try:
        controller = Controller(settings)
        controller.start()
    except (JobnestError, OSError, RuntimeError) as e:
        sys.exit(f"jobnest: cannot start the controller: {e}")
    pid_file = Path(home) / "controller.pid"
    pid_file.write_text(str(os.getpid()))
    _handle_signals(controller)
    where = f"unix://{settings.server.socket}" + (f" and {listen} (port {controller.port})" if listen else "")
    logging.info("jobnest controller serving on %s, store %s", where, settings.store.url.split("@")[-1])
    print(f"port {controller.port}" if listen else "ready", flush=True)
    controller.wait()
    controller.stop()
    pid_file.unlink(missing_ok=True)


def _handle_signals(controller: Controller) -> None:
    """SIGTERM and SIGINT stop the controller; SIGCHLD (a run's process ended) makes it look now.

    Python runs signal handlers on the main thread only, which here sleeps in a lock that a
    signal delivered to another thread does not interrupt. So the handlers do nothing, and a
    thread reads the signal numbers that Python writes to its wakeup pipe, whatever thread
    received them, and acts at once."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, lambda *_: None)

    def watch() -> None:
        while numbers := os.read(read_end, 512):
            if {signal.SIGTERM, signal.SIGINT} & set(numbers):
                controller.request_stop()
            controller.observe_soon()

    threading.Thread(target=watch, name="signals", daemon=True).start()


if __name__ == "__main__":
    main()
