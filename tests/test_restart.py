"""SIGKILL the controller while jobs run, start it again: nothing is lost, nothing runs twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jobnest

from .conftest import ADMIN, wait_for


def start_controller(home: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobnest_controller", "--home", str(home), "--listen", "127.0.0.1:0",
         "--admin-token", ADMIN, "--cpu", "2", "--docker", "none"],
        stdout=subprocess.PIPE, stderr=open(home.parent / "controller.log", "a"), text=True,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("port "), line
    return proc, f"127.0.0.1:{line.split()[1]}"


def test_sigkill_and_restart_loses_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    proc, address = start_controller(home)
    client = jobnest.Client(address, ADMIN, driver=False)

    def job(name: str, seconds: float, code: int, cpu: float) -> jobnest.Job:
        script = f"echo ran >> {marks / name}; sleep {seconds}; exit {code}"
        return client.submit(["sh", "-c", script], name=name, cpu=cpu)

    ends_while_down_ok = job("a", 1.0, 0, 0.5)
    ends_while_down_bad = job("b", 1.0, 3, 0.5)
    ends_after_restart = job("c", 4.0, 0, 0.5)
    queued = job("d", 0.2, 0, 1.0)  # does not fit until a or b ends
    wait_for(lambda: all((marks / name).exists() for name in "abc"))  # their processes have started
    assert queued.state == "queued"

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)  # a and b end while no controller runs
    assert not (marks / "d").exists()

    proc, address = start_controller(home)
    try:
        client = jobnest.Client(address, ADMIN, driver=False)
        jobs = {name: client.job(j.uuid) for name, j in
                zip("abcd", (ends_while_down_ok, ends_while_down_bad, ends_after_restart, queued))}
        client.wait([j.uuid for j in jobs.values()], timeout=30)
        states = {name: (j.info.state, j.info.exit_code) for name, j in jobs.items()}
        assert states == {"a": ("succeeded", 0), "b": ("failed", 3), "c": ("succeeded", 0), "d": ("succeeded", 0)}
        for name in "abcd":
            assert (marks / name).read_text() == "ran\n", f"job {name} ran more than once"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
