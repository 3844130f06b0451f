"""Failure handling and batches: retries, invalidated results, `map` and `run --each`."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import jobnest

from jobnest_controller.app import Controller

from .conftest import ADMIN, BUSYBOX, Running, make_settings, remove_containers, require_engine


def test_retries_rerun_a_failed_run_until_it_succeeds(where: tuple[Running, dict[str, Any]], tmp_path: Path) -> None:
    running, options = where
    script = 'echo x >> {output}/tries; [ "$(wc -l < {output}/tries)" -ge 3 ]'  # fails twice, then succeeds
    client = running.client()
    job = client.submit(["sh", "-c", script], retries=2, cpu=0.1, **options).wait(timeout=60)
    assert job.state == "succeeded"
    assert (job.output.download(tmp_path / "out") / "tries").read_text() == "x\nx\nx\n"
    again = client.submit(["sh", "-c", "echo y >> {output}/once; exit 1"], retries=1, cpu=0.1, **options)
    assert again.wait(timeout=60).state == "failed"
    assert Path(again.info.output_dir, "once").read_text() == "y\ny\n"  # one retry, then it stays failed


def test_bad_retry_options_are_refused(running: Running) -> None:
    client = running.client()
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.retries"):
        client.submit(["true"], retries=-1)
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.memory_on_oom"):
        client.submit(["true"], memory_on_oom=0.5)
    assert list(client.list()) == []


def test_an_invalidated_result_is_never_reused(where: tuple[Running, dict[str, Any]]) -> None:
    running, options = where
    client = running.client()
    first = client.submit(["echo", "result"], name="step", cpu=0.1, **options).wait(timeout=60)
    assert client.submit(["echo", "result"], name="step", cpu=0.1, **options).reused
    with pytest.raises(jobnest.Conflict, match="still"):
        client.invalidate(client.submit(["sleep", "30"], cpu=0.1, **options).info.run_uuid)
    client.invalidate(first.info.run_uuid[:10])
    rerun = client.submit(["echo", "result"], name="step", cpu=0.1, **options).wait(timeout=60)
    assert not rerun.reused and rerun.info.run_uuid != first.info.run_uuid
    assert "its result was invalidated" in client.why(rerun.uuid)["explanation"]
    with pytest.raises(jobnest.NotFound, match="run_uuid"):
        client.invalidate("0123456789")


def test_map_submits_one_job_per_item_in_one_batch(where: tuple[Running, dict[str, Any]]) -> None:
    running, options = where
    client = running.client()
    items = [f"S{i:03d}" for i in range(100)]
    jobs = client.map(["sh", "-c", "echo sample {item}"], items, cpu=0.05, **options)
    # The slower executor sets the limit: on a fresh 2-core machine a container takes ~0.5 s from
    # create to exit when containers start one after another (2/s). Wait for every item at that
    # rate, twice over, plus 30 s for the controller and the engine to get going.
    seconds_each = 0.5
    client.wait([j.uuid for j in jobs], timeout=2 * len(items) * seconds_each + 30)
    assert [j.logs() for j in jobs[:3]] == ["sample S000\n", "sample S001\n", "sample S002\n"]
    assert {j.state for j in jobs} == {"succeeded"}


def test_run_each_groups_the_batch_under_the_command(running: Running, tmp_path: Path) -> None:
    items = tmp_path / "samples.txt"
    items.write_text("a\nb\n\nc\n")
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    result = subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", "run", "--cpu", "0.1",
                             "--each", str(items), "--", "sh", "-c", "echo {item}; [ {item} != b ]"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "3 jobs: 2 succeeded, 1 did not" in result.stdout
    [driver] = running.client().list(roots=True)
    assert sorted(j.name for j in running.client().list(parent=driver.uuid)) == ["sh[a]", "sh[b]", "sh[c]"]


def test_race_keeps_the_first_accepted_and_never_reuses_the_losers(where: tuple[Running, dict[str, Any]]) -> None:
    running, options = where
    client = running.client()
    slow = client.submit(["sh", "-c", "sleep 20"], name="slow", cpu=0.1, **options)
    bad = client.submit(["sh", "-c", "exit 1"], name="bad", cpu=0.1, **options)
    good = client.submit(["sh", "-c", "sleep 0.5; echo good"], name="good", cpu=0.1, **options)
    assert jobnest.race([slow, bad, good], timeout=60) == good
    slow.wait(timeout=60)
    assert slow.state == "cancelled" and bad.state == "failed"
    early = client.submit(["echo", "early"], name="early", cpu=0.1, **options)
    late = client.submit(["sh", "-c", "sleep 0.5; echo late"], name="late", cpu=0.1, **options)
    assert jobnest.race([early, late], accept=lambda job: job.name == "late", timeout=60) == late
    assert not client.submit(["echo", "early"], name="early", cpu=0.1, **options).reused  # the loser was invalidated
    assert client.submit(["sh", "-c", "sleep 0.5; echo late"], name="late", cpu=0.1, **options).reused


@pytest.mark.parametrize("executor", ["local", "docker"])
def test_a_driver_that_left_is_resumed_without_running_anything_twice(tmp_path: Path, executor: str) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBNEST_")} | {"JOBNEST_HOME": str(home)}
    if executor == "docker":
        require_engine()
        env |= {"JOBNEST_EXECUTOR": "docker", "JOBNEST_IMAGE": BUSYBOX}
    script = [sys.executable, str(Path(__file__).resolve().parent.parent / "examples" / "resume.py")]
    try:
        left = subprocess.run([*script, "--detach"], env=env, capture_output=True, text=True, timeout=60)
        assert left.returncode == 0 and "submitted" in left.stdout, left.stderr
        back = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert back.returncode == 0, back.stderr
        assert "3 jobs: 1 ran, 2 reused" in back.stdout  # the second driver, then the two jobs it attached to
        client = jobnest.connect(home=str(home), driver=False)
        assert len({j.run_uuid for j in client.list() if j.name == "slow-step"}) == 1  # one run, two jobs
        assert len({j.run_uuid for j in client.list() if j.name == "next-step"}) == 1
        assert {j.executor for j in client.list() if j.name.endswith("-step")} == {executor}
    finally:
        subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", "--home", str(home), "down"],
                       capture_output=True, timeout=30)
        remove_containers(home)


def test_a_run_that_writes_more_log_than_the_limit_is_stopped_and_fails(tmp_path: Path) -> None:
    """Before, 10 s of stdout flood wrote 5.6 GB of log, with no cap."""
    settings = make_settings(tmp_path / "home")
    settings.max_log = 2**20
    controller = Controller(settings)
    controller.start()
    try:
        client = Running(controller).client()
        flood = client.submit(["sh", "-c", "yes flood"], cpu=0.5).wait(timeout=30)
        assert flood.state == "failed" and "passed the limit of 1048576 bytes" in flood.info.reason
        assert os.path.getsize(Path(flood.info.output_dir).parent / "stdout.log") <= 2**20  # cut at the limit
        assert client.submit(["echo", "quiet"], cpu=0.5).wait(timeout=30).state == "succeeded"
    finally:
        controller.stop(grace=0)
