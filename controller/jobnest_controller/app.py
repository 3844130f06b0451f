"""A running controller: store, executors, reconciler loop and gRPC server wired together.

`jobnest controller` (see `__main__.py`) builds one from settings; tests build one on a temp
home and a free port.
"""

import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jobnest.v1 import jobnest_pb2_grpc as pb_grpc

from .cgroups import CpuLimiter
from .executors.base import Executor
from .executors.local import LocalExecutor
from .reconciler import Reconciler
from .server import Activity, JobService
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)
SERVICE = "jobnest.v1.JobService"


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        home = Path(settings.home)
        home.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.store.url)
        limiter = CpuLimiter() if settings.node.cgroups else CpuLimiter(root="/nonexistent")
        self.executors: dict[str, Executor] = {
            "local": LocalExecutor(str(home / "runs"), settings.node.cpu_millis, settings.node.memory, limiter),
        }
        address = settings.server.advertise or f"unix://{settings.server.socket}"
        self.reconciler = Reconciler(self.store, self.executors, address)
        self.activity = Activity()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.service = JobService(self.store, self.executors, admin_token=settings.server.admin_token,
                                  default_executor=settings.default_executor, wake=self.wake,
                                  activity=self.activity)
        # Watch and Logs streams hold a worker thread each, hence the many workers.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=128), options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_JobServiceServicer_to_server(self.service, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port: int | None = None
        self._loop = threading.Thread(target=self._run_loop, name="reconciler", daemon=True)

    def start(self) -> None:
        sock = Path(self.settings.server.socket)
        sock.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is the local door: owner only
        try:
            self.server.add_insecure_port(f"unix://{sock}")
        finally:
            os.umask(old_umask)
        if self.settings.server.listen:
            self.port = self.server.add_insecure_port(self.settings.server.listen)
            if not self.port:
                raise OSError(f"cannot listen on {self.settings.server.listen}")
        self.server.start()
        os.chmod(sock, 0o600)
        self._loop.start()
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _run_loop(self) -> None:
        while not self._stop.is_set():
            try:
                live = self.reconciler.tick(time.time())
            except Exception:  # keep reconciling; the store is the truth and the next tick retries
                log.exception("reconciler tick failed")
                live = 1
            timeout = self.settings.idle_timeout
            if timeout and not live and self.activity.idle_for() > timeout:
                log.info("idle for %ss, shutting down", timeout)
                self._stop.set()
                break
            if live:  # pace the passes, so a burst of submissions is planned once, not per call
                self._stop.wait(self.settings.tick)
            else:
                self._wake.wait(0.5)
            self._wake.clear()

    def wake(self) -> None:
        self.reconciler.poke()
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
        self.server.stop(grace).wait()
        if self._loop.is_alive() and self._loop is not threading.current_thread():
            self._loop.join(timeout=5)
        Path(self.settings.server.socket).unlink(missing_ok=True)
        self.store.close()
