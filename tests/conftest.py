"""Shared fixtures: a real controller on a real port, a throwaway PostgreSQL, a one-node Slurm
cluster and an image registry."""

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jobnest
from jobnest_controller.app import Controller
from jobnest_controller.settings import NodeSettings, ServerSettings, Settings, SlurmSettings, StoreSettings

from . import postgres, slurm
from . import registry as registry_server

ADMIN = "test-admin-token-0123456789"
ENGINE = "unix:///var/run/docker.sock"
BUSYBOX = "jobnest/busybox:latest"
JOBNEST_IMAGE = "jobnest/jobnest:latest"


class Running:
    """A controller serving on a temp home and a free TCP port, and ways to talk to it."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.store = controller.store
        self.address = f"127.0.0.1:{controller.port}"

    def client(self, token: str = ADMIN, driver: bool = False) -> jobnest.Client:
        return jobnest.Client(self.address, token, driver=driver)

    def env(self) -> dict[str, str]:
        """This process's environment for a program to reach this controller as the admin, as
        no job's own program."""
        env = {**os.environ, "JOBNEST_CONTROLLER": self.address, "JOBNEST_TOKEN": ADMIN}
        env.pop("JOBNEST_JOB", None)
        return env


def make_settings(home: Path, store_url: str = "", cpu: float = 2.0, docker: list[str] | None = None) -> Settings:
    return Settings(home=str(home), server=ServerSettings(listen="127.0.0.1:0", admin_token=ADMIN),
                    store=StoreSettings(store_url), node=NodeSettings(cpu_millis=round(cpu * 1000)),
                    docker=docker or [])


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    controller = Controller(make_settings(tmp_path / "home"))
    controller.start()
    try:
        yield Running(controller)
    finally:
        controller.stop(grace=0)


def require_engine() -> None:
    """Docker tests need the engine and images that `make test` sets up: their absence fails."""
    if subprocess.run(["docker", "image", "inspect", BUSYBOX, JOBNEST_IMAGE], capture_output=True).returncode:
        pytest.fail("no Docker engine with the project's images; run `make images` (make test does)")


@pytest.fixture
def docker_running(tmp_path: Path) -> Iterator[Running]:
    require_engine()
    home = tmp_path / "home"
    settings = make_settings(home, docker=[ENGINE])
    settings.mount_roots = [str(tmp_path / "mounts")]  # host folders its jobs may mount
    controller = Controller(settings)
    controller.start()
    try:
        yield Running(controller)
    finally:
        controller.stop(grace=0)
        remove_containers(home)


def remove_containers(home: Path) -> None:
    found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=jobnest.controller={home}"],
                           capture_output=True, text=True).stdout.split()
    if found:
        subprocess.run(["docker", "rm", "-f", *found], capture_output=True)


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """A throwaway image registry on 127.0.0.1 for this test session (its host:port)."""
    try:
        with registry_server.serve() as address:
            yield address
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def slurm_conf() -> Iterator[Path]:
    """A throwaway one-node Slurm cluster for this test session; `make test` installs its daemons."""
    try:
        with slurm.cluster() as conf:
            yield conf
    except RuntimeError as e:
        pytest.fail(str(e))


def slurm_settings(home: Path, conf: Path) -> Settings:
    settings = make_settings(home)
    settings.slurm = SlurmSettings(partition=slurm.PARTITION, conf=str(conf))
    return settings


@pytest.fixture
def slurm_running(tmp_path: Path, slurm_conf: Path) -> Iterator[Running]:
    controller = Controller(slurm_settings(tmp_path / "home", slurm_conf))
    controller.start()
    try:
        yield Running(controller)
    finally:
        controller.stop(grace=0)
        slurm.cancel_all(slurm_conf)


@pytest.fixture(params=["local", "docker", "slurm"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Running, dict[str, Any]]]:
    """A controller, and the options that send a job to the executor under test: each test that
    takes it runs with local processes, with containers and on Slurm."""
    home = tmp_path / "home"
    if request.param == "docker":
        require_engine()
        settings, options = make_settings(home, docker=[ENGINE]), {"executor": "docker", "image": BUSYBOX}
    elif request.param == "slurm":
        conf = request.getfixturevalue("slurm_conf")
        settings, options = slurm_settings(home, conf), {"executor": "slurm"}
    else:
        settings, options = make_settings(home), {}
    controller = Controller(settings)
    controller.start()
    try:
        yield Running(controller), options
    finally:
        controller.stop(grace=0)
        if request.param == "docker":
            remove_containers(home)
        elif request.param == "slurm":
            slurm.cancel_all(request.getfixturevalue("slurm_conf"))


def new_database(postgres_url: str, tmp_path: Path) -> str:
    """The URL of a fresh, empty database of the throwaway cluster, named after the test."""
    return postgres.new_database(postgres_url, f"t{tmp_path.name.replace('-', '_').lower()[-40:]}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for this test session; `make test` installs its binaries."""
    try:
        with postgres.cluster() as url:
            yield url
    except RuntimeError as e:
        pytest.fail(str(e))


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
