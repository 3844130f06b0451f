"""`when` conditions: evaluated by the controller, cascading, surviving a controller restart."""

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import jobnest
from jobnest_controller.conditions import Tracker, evaluate, parse

from .conftest import ADMIN, Running, wait_for
from .test_restart import start_controller

EXAMPLE = {"or": [{"and": [{"job": "a", "is": "succeeded"}, {"job": "b", "is": "succeeded"}]},
                  {"not": {"job": "c", "is": "failed"}}]}


@pytest.mark.parametrize("states, outcome", [
    ({"a": "running", "b": "queued", "c": "running"}, (None, None)),
    ({"a": "succeeded", "b": "succeeded", "c": "running"}, (True, "b")),
    ({"a": "failed", "b": "running", "c": "failed"}, (False, "c")),
    ({"a": "failed", "b": "running", "c": "cancelled"}, (True, "c")),
    ({"a": "succeeded", "b": "running", "c": "running"}, (None, None)),
])
def test_three_valued_evaluation(states: dict[str, str], outcome: tuple[bool | None, str | None]) -> None:
    assert evaluate(parse(json.dumps(EXAMPLE)), states) == outcome


@pytest.mark.parametrize("text, words", [
    ("not json", "not a condition"),
    ('{"job": "a", "is": "won"}', "a job term is"),
    ('{"and": []}', "is not a condition term"),
    ('{"xor": [{"job": "a", "is": "done"}]}', "is not a condition term"),
])
def test_malformed_conditions_are_refused(text: str, words: str) -> None:
    with pytest.raises(jobnest.InvalidSpec, match=words):
        parse(text)


def test_sdk_builds_conditions_with_operators() -> None:
    a, b = jobnest.Job(None, "a" * 32), jobnest.Job(None, "b" * 32)  # type: ignore[arg-type]
    assert (a.succeeded & ~b.failed).tree == {"and": [{"job": "a" * 32, "is": "succeeded"},
                                                      {"not": {"job": "b" * 32, "is": "failed"}}]}
    with pytest.raises(TypeError):
        bool(a.done | b.cancelled)


def test_a_job_waits_for_its_condition_then_runs(running: Running) -> None:
    client = running.client()
    first = client.submit(["sleep", "1"], cpu=0.1)
    second = client.submit(["echo", "after"], cpu=0.1, when=first.succeeded)
    time.sleep(0.5)
    assert second.state == "queued" and first.state == "running"
    second.wait(timeout=30)
    assert second.state == "succeeded" and first.state == "succeeded"
    assert client.get(second.uuid).started_at >= client.get(first.uuid).finished_at  # type: ignore[operator]


def test_a_condition_that_cannot_hold_cancels_and_cascades(where: tuple[Running, dict[str, Any]]) -> None:
    running, options = where
    client = running.client()
    reduction = client.submit(["sh", "-c", "sleep 0.3; exit 2"], name="reduction", cpu=0.1, **options)
    fetch = client.submit(["echo", "fetch"], name="fetch", cpu=0.1, when=reduction.succeeded, **options)
    fit = client.submit(["echo", "fit"], name="fit", cpu=0.1, when=fetch.succeeded, **options)
    cleanup = client.submit(["echo", "cleanup"], name="cleanup", cpu=0.1, when=reduction.done, **options)
    for job in (fetch, fit, cleanup):
        job.wait(timeout=60)
    assert fetch.state == "cancelled" and f"job reduction ({reduction.uuid[:8]}) failed" in fetch.info.reason
    assert fit.state == "cancelled" and f"job fetch ({fetch.uuid[:8]}) cancelled; root cause: job reduction" \
        in fit.info.reason
    assert cleanup.state == "succeeded"


def test_a_held_run_two_jobs_share_follows_the_one_still_waiting(running: Running) -> None:
    """Two identical jobs wait on two identical upstream jobs, so each pair shares one run.
    Cancelling the first upstream job alone cancels the job that waits on it; the other keeps
    waiting on its own upstream job, which still runs, and then runs itself."""
    client = running.client()
    a1 = client.submit(["sleep", "1"], cpu=0.1)
    j1 = client.submit(["echo", "x"], cpu=0.1, when=a1.succeeded)
    a2 = client.submit(["sleep", "1"], cpu=0.1)
    j2 = client.submit(["echo", "x"], cpu=0.1, when=a2.succeeded)
    assert a2.info.run_uuid == a1.info.run_uuid and j2.info.run_uuid == j1.info.run_uuid
    a1.cancel()
    assert j1.wait(timeout=20).state == "cancelled"
    assert j2.wait(timeout=20).state == "succeeded" and a2.state == "succeeded"
    assert j2.logs() == "x\n"


def test_conditions_naming_unknown_or_outside_jobs_are_refused(running: Running) -> None:
    client = running.client()
    ghost = jobnest.Job(client, "f" * 32)
    with pytest.raises(jobnest.NotFound, match=r"jobs\[0\]\.when: names job 'f+'"):
        client.submit(["true"], when=ghost.succeeded)
    spec = client.spec(["true"])
    spec.when = '{"job": 1}'
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.when"):
        client.submit_many([spec])
    assert list(client.list()) == []


def test_jobs_waiting_on_conditions_and_inputs_survive_a_controller_kill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc, address = start_controller(home, "none")
    try:
        client = jobnest.Client(address, ADMIN, driver=False)
        first = client.submit(["sh", "-c", "sleep 2; echo made >{output}/thing"], cpu=0.1)
        second = client.submit(["echo", "later"], cpu=0.1, when=first.succeeded)
        reader = client.submit(["cat", "{inputs.x}/thing"], cpu=0.1, inputs={"x": first.output})
        wait_for(lambda: first.state == "running")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc, address = start_controller(home, "none")
        client = jobnest.Client(address, ADMIN, driver=False)
        client.wait([first.uuid, second.uuid, reader.uuid], timeout=30)
        assert client.get(second.uuid).state == "succeeded"
        assert client.job(second.uuid).logs() == "later\n"
        assert client.job(reader.uuid).logs() == "made\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_long_chains_of_operators_stay_flat() -> None:
    jobs = [jobnest.Job(None, f"{i:032x}") for i in range(2000)]  # type: ignore[arg-type]
    everything = jobs[0].succeeded
    for job in jobs[1:]:
        everything = everything & job.succeeded
    assert len(everything.tree["and"]) == 2000
    assert evaluate(parse(everything.to_json()), {j.uuid: "succeeded" for j in jobs})[0] is True


def test_the_tracker_decides_as_evaluating_the_whole_condition_would() -> None:
    """Random conditions over six jobs that end in random order: the tracker, told of one end at a
    time, decides each condition exactly when and as a full evaluation first would, and names a
    job that decided it."""
    rng = random.Random(7)

    def term(depth: int) -> dict[str, Any]:
        if depth == 0 or rng.random() < 0.3:
            return {"job": rng.choice("abcdef"), "is": rng.choice(["succeeded", "failed", "cancelled", "done"])}
        if rng.random() < 0.2:
            return {"not": term(depth - 1)}
        return {rng.choice(["and", "or"]): [term(depth - 1) for _ in range(rng.randint(1, 4))]}

    for _ in range(2000):
        tree, tracker = term(4), Tracker()
        states = dict.fromkeys("abcdef", "running")
        order = rng.sample("abcdef", 6)
        ended_before = rng.randint(0, 3)
        for job in order[:ended_before]:
            states[job] = rng.choice(["succeeded", "failed", "cancelled"])
        decided = tracker.add("k", tree, dict(states))
        for job in order[ended_before:]:
            if decided:
                break
            assert evaluate(tree, states)[0] is None  # still open: the tracker must not have decided
            states[job] = rng.choice(["succeeded", "failed", "cancelled"])
            decided = tracker.ended(job, states[job])
        value, _ = evaluate(tree, states)
        assert decided and decided[0].value == value and len(tracker) == 0
        assert states[decided[0].job] == decided[0].state and decided[0].job in json.dumps(tree)

