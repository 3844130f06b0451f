"""The reconciler stepped by hand with its own clock: no server, a real store, real processes."""

import subprocess
import threading
import time
from pathlib import Path

import pytest

from jobnest_controller.cgroups import CpuLimiter
from jobnest_controller.data import Data
from jobnest_controller.executors.local import LocalExecutor
from jobnest_controller.programs import Programs
from jobnest_controller.reconciler import Reconciler
from jobnest_controller.states import State
from jobnest_controller.store import Caller, Kind, Store

from .conftest import Running
from .test_store import ids, spec


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Store, LocalExecutor, Reconciler]:
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    executor = LocalExecutor(str(tmp_path / "runs"), 2000, 2**30, CpuLimiter(root="/nonexistent"))
    return store, executor, Reconciler(store, {"local": executor}, "unix:///nowhere", Programs(str(tmp_path / "p")),
                                       Data(str(tmp_path / "d"), 2**20))


def run_until_done(store: Store, reconciler: Reconciler, job: str, limit: float = 20) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        reconciler.tick(time.time())
        row = store.get_job(job)
        if State(row["state"]).terminal:
            return row
        time.sleep(0.02)
    raise AssertionError(f"job {job} did not finish")


def test_a_run_claimed_but_never_started_is_queued_again(parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, executor, reconciler = parts
    mark = tmp_path / "ran"
    [job] = ids(store.submit(Caller("admin", "me"), "", [spec("sh", "-c", f"echo x >> {mark}")], 1.0))
    run = store.get_job(job)["run_uuid"]
    with store.write() as tx:  # what a controller killed between claim and start leaves behind
        store.transition(tx, Kind.RUN, run, State.QUEUED, State.RUNNING, "", workdir=executor.workdir(run))
    row = run_until_done(store, reconciler, job)
    assert row["state"] == "succeeded" and mark.read_text() == "x\n"


def test_a_retry_claimed_when_the_controller_died_is_not_ended_by_the_attempt_before(
        parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attempt 1 failed with exit code 3 and left its pid and exit-code files; the controller
    claimed attempt 2 and was killed before starting it. The controller that comes back must not
    read attempt 1's files as attempt 2's end (it failed the job with exit code 3)."""
    store, executor, reconciler = parts
    mark = tmp_path / "tried"
    [job] = ids(store.submit(Caller("admin", "me"), "", [spec("sh", "-c", f"[ -e {mark} ] || {{ touch {mark}; exit 3; }}",
                                                              retries=1)], 1.0))
    deadline = time.monotonic() + 20
    while (run := store.run_of(job))["attempt"] < 2 or run["state"] != "queued":
        assert time.monotonic() < deadline, run
        reconciler.tick(time.time())
        time.sleep(0.02)
    with store.write() as tx:  # claimed by a pass of a controller killed before the start
        store.transition(tx, Kind.RUN, run["uuid"], State.QUEUED, State.RUNNING, "", workdir=executor.workdir(run["uuid"]))
    again = LocalExecutor(str(executor.root), 2000, 2**30, CpuLimiter(root="/nonexistent"))
    restarted = Reconciler(store, {"local": again}, "unix:///nowhere", reconciler.programs, reconciler.data)
    row = run_until_done(store, restarted, job)
    assert (row["state"], row["exit_code"]) == ("succeeded", 0)


def test_timeout_fails_the_run(parts) -> None:  # type: ignore[no-untyped-def]
    store, _, reconciler = parts
    [job] = ids(store.submit(Caller("admin", "me"), "", [spec("sleep", "30", timeout=0.3)], 1.0))
    row = run_until_done(store, reconciler, job)
    assert row["state"] == "failed" and row["reason"] == "timed out after 0.3s"


def test_a_driver_that_died_is_failed(parts) -> None:  # type: ignore[no-untyped-def]
    store, _, reconciler = parts
    gone = subprocess.Popen(["true"])
    gone.wait()
    driver = spec("driver.py", driver=True, driver_pid=gone.pid, driver_host=reconciler.host, executor="driver")
    views, token = store.submit(Caller("admin", "me"), "", [driver], 1.0)
    [job] = ids((views, token))
    assert token and store.get_job(job)["state"] == "running"
    row = run_until_done(store, reconciler, job)
    assert row["state"] == "failed" and row["reason"] == "driver exited without finishing"


def test_a_driver_stored_with_an_impossible_pid_fails_alone(parts) -> None:  # type: ignore[no-untyped-def]
    """A driver an older controller accepted with a pid no process can have (2**31): the passes
    go on (they raised OverflowError at every pass, so nothing started or ended), other jobs run,
    and the driver is failed as gone."""
    store, _, reconciler = parts
    driver = spec("driver.py", driver=True, driver_pid=2**31, driver_host=reconciler.host, executor="driver")
    [bad] = ids(store.submit(Caller("admin", "me"), "", [driver], 1.0))
    [other] = ids(store.submit(Caller("admin", "me"), "", [spec("true")], 1.0))
    assert run_until_done(store, reconciler, other)["state"] == "succeeded"
    row = run_until_done(store, reconciler, bad)
    assert row["state"] == "failed" and row["reason"] == "driver exited without finishing"


def test_a_run_that_cannot_be_observed_holds_up_no_other(parts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An executor that raises on one run's poll: every other run still starts and ends."""
    store, executor, reconciler = parts
    [stuck] = ids(store.submit(Caller("admin", "me"), "", [spec("sleep", "30")], 1.0))
    stuck_run = store.get_job(stuck)["run_uuid"]
    poll = executor.poll

    def broken(run):  # type: ignore[no-untyped-def]
        if run["uuid"] == stuck_run:
            raise RuntimeError("this run's state cannot be read")
        return poll(run)

    monkeypatch.setattr(executor, "poll", broken)
    reconciler.tick(time.time())  # starts it
    [other] = ids(store.submit(Caller("admin", "me"), "", [spec("true")], 2.0))
    assert run_until_done(store, reconciler, other)["state"] == "succeeded"
    assert store.get_job(stuck)["state"] == "running"
    store.cancel(stuck, "done", 3.0)
    monkeypatch.setattr(executor, "poll", poll)
    assert run_until_done(store, reconciler, stuck)["state"] == "cancelled"


def test_a_run_asked_to_stop_that_comes_back_to_the_queue_ends(parts) -> None:  # type: ignore[no-untyped-def]
    """A cancel that lands while a run's start is under way, whose start then finds its node away
    (so the run is queued again): the run ends cancelled, rather than waiting in the queue forever."""
    store, _, reconciler = parts
    [job] = ids(store.submit(Caller("admin", "me"), "", [spec("sleep", "30")], 1.0))
    run = store.get_job(job)["run_uuid"]
    with store.write() as tx:  # claimed by a pass, its start not done yet
        store.transition(tx, Kind.RUN, run, State.QUEUED, State.RUNNING, "")
    assert store.cancel(job, "stop", 2.0) == [job]
    with store.write() as tx:  # the start could not reach its node: queued again
        store.transition(tx, Kind.RUN, run, State.RUNNING, State.QUEUED, "")
    for _ in range(2):
        reconciler.tick(time.time())
    row = store.get_job(job)
    assert row["state"] == "cancelled" and row["run_state"] == "cancelled"


def test_storing_an_output_holds_up_no_other_run(running: Running) -> None:
    """A run's output is stored off the reconciler's pass: while one takes long (a million small
    files took 68 s), other jobs start and end. Before, every other job waited for it."""
    data = running.controller.reconciler.data
    begun, release = threading.Event(), threading.Event()
    ingest = data.ingest

    def slow_ingest(folder: Path) -> str:
        begun.set()
        release.wait(timeout=60)
        return ingest(folder)

    data.ingest = slow_ingest  # type: ignore[method-assign]
    client = running.client()
    big = client.submit(["sh", "-c", "echo many > {output}/files"], name="big", cpu=0.1)
    assert begun.wait(timeout=20)
    data.ingest = ingest  # type: ignore[method-assign]
    small = client.submit(["echo", "quick"], name="small", cpu=0.1).wait(timeout=20)
    assert small.state == "succeeded" and client.get(big.uuid).state == "running"
    release.set()
    assert big.wait(timeout=20).state == "succeeded" and big.info.output
