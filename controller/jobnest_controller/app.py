"""A running controller: store, executors, reconciler loop and gRPC server wired together.

`jobnest controller` (see `__main__.py`) builds one from settings; tests build one on a temp
home and a free port.
"""

import contextlib
import logging
import os
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jobnest.errors import JobnestError
from jobnest.v1 import jobnest_pb2_grpc as pb_grpc

from . import confine, retention
from .cgroups import CpuLimiter
from .data import Data
from .executors.base import Executor
from .executors.local import LocalExecutor
from .programs import Programs
from .reconciler import Reconciler
from .server import WORKERS, Activity, DataService, JobService
from .settings import Settings
from .lease import LEASE
from .store import Store

log = logging.getLogger(__name__)
SERVICE = "jobnest.v1.JobService"
# Above gRPC's 4 MiB default: a program archive (up to 64 MiB) or the manifest of a big output.
MAX_MESSAGE = 128 * 2**20
COLLECT_EVERY = 3600.0  # seconds between the retention policy's passes


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        home = Path(settings.home)
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)  # specs, logs and outputs are private
        self.store = Store(settings.store.url)
        limiter = CpuLimiter() if settings.node.cgroups else CpuLimiter(root="/nonexistent")
        self.data = Data(str(home / "data"), settings.max_upload)
        self.store.data = self.data
        self.forbidden = confine.forbidden(settings)  # what no job may reach of the controller's own
        sandbox = confine.Sandbox(str(home), self.data.trees, settings.server.jobs_socket, self.forbidden,
                                  enabled=settings.node.sandbox)
        if sandbox.available:
            confine.undumpable()
        else:
            log.warning("local jobs are not confined (that needs root and unshare, and no --no-sandbox): they "
                        "can reach this controller's files and its owner's socket")
        self.executors: dict[str, Executor] = {
            "local": LocalExecutor(str(home / "runs"), settings.node.cpu_millis, settings.node.memory, limiter,
                                   sandbox),
        }
        if settings.docker:
            from .executors.docker import DockerExecutor  # only where Docker is wanted
            self.executors["docker"] = DockerExecutor(str(home / "runs"), settings.docker, controller_id=str(home),
                                                      forbidden=self.forbidden)
        if settings.kubernetes.namespace:
            from .executors.kubernetes import KubernetesExecutor  # only where Kubernetes is wanted
            # Releases of the chart share the home's path: the address tells them apart.
            self.executors["kubernetes"] = KubernetesExecutor(
                str(home), settings.kubernetes, controller_id=f"{home} {settings.server.advertise}")
        if settings.slurm.partition:
            from .executors.slurm import SlurmExecutor
            self.executors["slurm"] = SlurmExecutor(str(home / "runs"), settings.slurm)
        if settings.default_executor not in self.executors:
            raise JobnestError(f"default executor {settings.default_executor!r} is not configured "
                               f"(configured: {', '.join(self.executors)})")
        for executor in self.executors.values():
            executor.notify = self.observe_soon
        address = settings.server.advertise or f"unix://{settings.server.jobs_socket}"
        self.programs = Programs(str(home / "programs"), self.data)
        self.reconciler = Reconciler(self.store, self.executors, address, self.programs, self.data,
                                     max_log=settings.max_log)
        self.reconciler.notify = self.observe_soon
        self.activity = Activity()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = False  # runs are live, so the loop passes every `tick` anyway
        self.health = health.HealthServicer()
        # Two doors: the owner's socket, where the file mode vouches for the caller, and the one
        # jobs are given plus any TCP port, where every call needs a token.
        self.owner_server = self._server(trust_local=True)
        self.token_server = self._server(trust_local=False)
        self.port: int | None = None
        # Who holds the store's lease: a controller restarted on its home (one at a time, see
        # `__main__`) takes its own lease back at once; another home waits for it to lapse.
        self.holder = f"{socket.gethostname()}:{home.resolve()}"
        self._loop = threading.Thread(target=self._run_loop, name="reconciler", daemon=True)

    def _server(self, trust_local: bool) -> grpc.Server:
        # On the owner's socket the owner's own folders may be mounted too.
        roots = self.settings.mount_roots + ([str(Path.home())] if trust_local else [])
        service = JobService(self.store, self.executors, self.programs, self.data,
                             admin_token=self.settings.server.admin_token,
                             mount_roots=roots, forbidden=self.forbidden,
                             runs_root=str(Path(self.settings.home).resolve() / "runs"),
                             driver_lease=self.settings.driver_lease,
                             default_executor=self.settings.default_executor, wake=self.wake,
                             activity=self.activity, trust_local=trust_local,
                             reconciler=self.reconciler)
        # Streams hold a worker thread each, hence the many workers (see `server.Streams`).
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS), options=[
            ("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE)])
        pb_grpc.add_JobServiceServicer_to_server(service, server)
        pb_grpc.add_DataServiceServicer_to_server(DataService(service, self.data), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self) -> None:
        """Serve, once this controller holds the store's lease: while another does, wait for it."""
        self._take_lease()
        server = self.settings.server
        for sock in (server.socket, server.jobs_socket):
            Path(sock).unlink(missing_ok=True)
            Path(sock).parent.mkdir(mode=0o700, exist_ok=True)
        old_umask = os.umask(0o177)  # sockets are created owner-only
        try:
            self.owner_server.add_insecure_port(f"unix://{server.socket}")
            self.token_server.add_insecure_port(f"unix://{server.jobs_socket}")
        finally:
            os.umask(old_umask)
        if server.listen:
            self.port = self.token_server.add_insecure_port(server.listen)
            if not self.port:
                raise OSError(f"cannot listen on {server.listen}")
        self.owner_server.start()
        self.token_server.start()
        self._loop.start()
        threading.Thread(target=self._keep_lease, name="lease", daemon=True).start()
        if self.settings.retention:
            threading.Thread(target=self._collect, name="retention", daemon=True).start()
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _take_lease(self) -> None:
        waiting = False
        while not self.store.lead(self.holder, time.time()):
            if not waiting:
                log.info("another controller is active on %s: waiting for its lease to lapse", self.settings.store.url)
                waiting = True
            if self._stop.wait(LEASE / 6):
                raise JobnestError("stopped while waiting for the store's lease")

    def _keep_lease(self) -> None:
        """Renew the lease; once another controller has taken it (this one was paused past it),
        stop: it must not run what the other runs."""
        while not self._stop.wait(LEASE / 3):
            try:
                if not self.store.renew(time.time()):
                    log.error("another controller took this store's lease: stopping")
                    self.request_stop()
            except JobnestError:
                log.exception("could not renew the store's lease; trying again")

    def _collect(self) -> None:
        """The retention policy: at start, then hourly."""
        while not self._stop.is_set():
            try:
                done = retention.collect(self.store, self.data, self.programs, self.settings.retention, time.time())
                log.info("retention: removed %s", done)
            except Exception:  # the store away, a file it cannot remove: the next pass tries again
                log.exception("retention: could not collect; trying again in an hour")
            self._stop.wait(COLLECT_EVERY)

    def _run_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                live = self.reconciler.tick(time.time())
            except Exception:  # keep reconciling; the store is the truth and the next tick retries
                log.exception("reconciler tick failed")
                live = 1
            self._busy = bool(live)
            timeout = self.settings.idle_timeout
            if timeout and not live and self.activity.idle_for() > timeout:
                log.info("idle for %ss, shutting down", timeout)
                self._stop.set()
                break
            self._wake.wait(self.settings.tick if live else 0.5)

    def wake(self) -> None:
        """Something was submitted or cancelled, or capacity was lent. A busy loop sees it at its
        next pass, so a burst of submissions is planned once, not once a call."""
        if not self._busy:
            self._wake.set()

    def observe_soon(self) -> None:
        """A run may have ended: look now rather than at the next pass."""
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wait(self) -> None:
        self._stop.wait()

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        self.health.enter_graceful_shutdown()
        for server in (self.owner_server, self.token_server):
            server.stop(grace).wait()
        if self._loop.is_alive() and self._loop is not threading.current_thread():
            self._loop.join(timeout=5)
        for sock in (self.settings.server.socket, self.settings.server.jobs_socket):
            Path(sock).unlink(missing_ok=True)
        for executor in self.executors.values():
            executor.close()
        self.reconciler.close()
        if self.store.epoch is not None:
            with contextlib.suppress(JobnestError):
                self.store.release_lease()  # a controller waiting for the store takes it now
        self.store.close()
