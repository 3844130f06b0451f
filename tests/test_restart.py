"""SIGKILL the controller while jobs run, start it again: nothing is lost, nothing runs twice.

Once with local processes and once with Docker containers. Each job appends a line to a file
in its run's output dir when it starts, so a run started twice would show two lines.
"""

import signal
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobnest

from .conftest import ADMIN, wait_for
from .conftest import BUSYBOX, ENGINE, new_database, remove_containers, require_engine


def spawn_controller(home: Path, docker: str, store: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobnest_controller", "--home", str(home), "--listen", "127.0.0.1:0",
         "--cpu", "2", "--docker", docker, *(["--store", store] if store else [])],
        stdout=subprocess.PIPE, stderr=open(home.parent / "controller.log", "a"), text=True,
        env={**os.environ, "JOBNEST_ADMIN_TOKEN": ADMIN},
    )


def address_of(proc: subprocess.Popen[str]) -> str:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("port "), line
    return f"127.0.0.1:{line.split()[1]}"


def start_controller(home: Path, docker: str, store: str = "") -> tuple[subprocess.Popen[str], str]:
    proc = spawn_controller(home, docker, store)
    return proc, address_of(proc)


@pytest.mark.parametrize("executor", ["local", "docker"])
def test_sigkill_and_restart_loses_nothing(tmp_path: Path, executor: str) -> None:
    if executor == "docker":
        require_engine()
    home = tmp_path / "home"
    home.mkdir()
    proc, address = start_controller(home, ENGINE if executor == "docker" else "none")
    client = jobnest.Client(address, ADMIN, driver=False)

    def job(name: str, seconds: float, code: int, cpu: float) -> jobnest.Job:
        script = f'echo ran >> "$JOBNEST_OUTPUT/marks"; sleep {seconds}; echo {name} done; exit {code}'
        return client.submit(["sh", "-c", script], name=name, cpu=cpu, executor=executor,
                             image=BUSYBOX if executor == "docker" else None)

    try:
        jobs = {"a": job("a", 1.0, 0, 0.5), "b": job("b", 1.0, 3, 0.5), "c": job("c", 5.0, 0, 0.5),
                "d": job("d", 0.2, 0, 1.0)}  # d does not fit until a or b ends
        marks = lambda name: Path(client.get(jobs[name].uuid).output_dir or "/nonexistent", "marks")  # noqa: E731
        wait_for(lambda: all(marks(n).exists() for n in "abc"), timeout=60)  # their programs have started
        assert jobs["d"].state == "queued"

        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(2.5)  # a and b end while no controller runs; c goes on

        proc, address = start_controller(home, ENGINE if executor == "docker" else "none")
        client = jobnest.Client(address, ADMIN, driver=False)
        client.wait([j.uuid for j in jobs.values()], timeout=60)
        states = {name: (client.get(j.uuid).state, client.get(j.uuid).exit_code) for name, j in jobs.items()}
        assert states == {"a": ("succeeded", 0), "b": ("failed", 3), "c": ("succeeded", 0), "d": ("succeeded", 0)}
        for name in "abcd":
            assert marks(name).read_text() == "ran\n", f"job {name} ran more than once"
            assert client.job(jobs[name].uuid).logs() == f"{name} done\n"  # output after the kill is kept
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        remove_containers(home)


def test_the_admin_token_is_never_on_a_command_line(tmp_path: Path) -> None:
    """A command line is readable by every process (a job's too, from /proc): the flag is refused,
    and the token comes from the environment or a file."""
    refused = subprocess.run([sys.executable, "-m", "jobnest_controller", "--home", str(tmp_path / "h1"),
                              "--admin-token", ADMIN], capture_output=True, text=True)
    assert refused.returncode == 2 and "readable by every process" in refused.stderr
    (tmp_path / "token").write_text(ADMIN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "jobnest_controller", "--home", str(tmp_path / "h2"),
                             "--listen", "127.0.0.1:0", "--docker", "none", "--admin-token-file", str(tmp_path / "token")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("port "), line
        assert ADMIN not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        client = jobnest.Client(f"127.0.0.1:{line.split()[1]}", ADMIN, driver=False)
        assert client.create_token("someone").startswith("jn_")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_of_two_controllers_on_one_store_one_serves_and_the_other_takes_over_within_10s(
        tmp_path: Path, db: str, request: pytest.FixtureRequest) -> None:
    """Two controllers with their own homes on one store: before, both served and ran jobs twice."""
    url = f"sqlite:///{tmp_path / 'shared.db'}" if db == "sqlite" else new_database(
        request.getfixturevalue("postgres_url"), tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, address = start_controller(tmp_path / "a", "none", url)
    second = spawn_controller(tmp_path / "b", "none", url)
    marks = tmp_path / "marks"
    try:
        client = jobnest.Client(address, ADMIN, driver=False)
        script = f'sleep 0.4; echo "$JOBNEST_JOB" >> {marks} # job '
        jobs = client.submit_many([client.spec(["sh", "-c", script + str(i)], cpu=0.5) for i in range(16)])
        ready, _, _ = select.select([second.stdout], [], [], 1.0)
        assert not ready and second.poll() is None  # waiting for the lease, serving nothing
        wait_for(lambda: marks.exists())
        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        client = jobnest.Client(address_of(second), ADMIN, driver=False)
        assert time.monotonic() - killed < 10
        client.wait([j.uuid for j in jobs], timeout=60)
        assert {client.get(j.uuid).state for j in jobs} == {"succeeded"}
        assert sorted(marks.read_text().split()) == sorted(j.uuid for j in jobs)  # each ran once
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
