"""Retention: `jobnest gc` removes job history, runs and data that nothing needs, and never what
a live job, a pinned job or the retention window keeps; `jobnest status` shows disk use."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobnest

from jobnest_controller.app import Controller

from .conftest import Running, make_settings, new_database, wait_for
from .test_cli import cli


@pytest.fixture(params=["sqlite", "postgresql"])
def kept(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    """A controller whose data has no grace: all but what the rules keep is collectable at once."""
    url = new_database(request.getfixturevalue("postgres_url"), tmp_path) if request.param == "postgresql" else ""
    controller = Controller(make_settings(tmp_path / "home", store_url=url))
    controller.data.recent.grace = 0
    controller.start()
    try:
        yield Running(controller)
    finally:
        controller.stop(grace=0)


def files(home: Path, folder: str) -> set[str]:
    return {p.name for p in (home / folder).rglob("*") if p.is_file()}


def test_gc_removes_only_what_nothing_keeps(kept: Running, tmp_path: Path) -> None:
    client = kept.client(driver=True)
    home = Path(kept.controller.settings.home)
    (tmp_path / "old.txt").write_text("old input\n")
    (tmp_path / "live.txt").write_text("live input\n")
    (tmp_path / "held.txt").write_text("held input\n")
    old = client.submit(["sh", "-c", "cat {inputs.i} > {output}/copy; echo old-out > {output}/mine"],
                        name="old", inputs={"i": jobnest.upload(tmp_path / "old.txt")}).wait(timeout=30)
    pinned = kept.client().submit(["sh", "-c", "echo pinned-out > {output}/keep"], name="pinned").wait(timeout=30)
    live = client.submit(["sh", "-c", "cat {inputs.i} >/dev/null; sleep 3; echo live-out > {output}/x"],
                         name="live", inputs={"i": jobnest.upload(tmp_path / "live.txt")})
    held = client.submit(["cat", "{inputs.i}"], name="held", inputs={"i": jobnest.upload(tmp_path / "held.txt")},
                         when=live.succeeded)
    assert old.state == pinned.state == "succeeded"
    client.pin(pinned.uuid)
    old_run = Path(old.info.output_dir).parent
    blobs_before = files(home, "data/blobs")
    nothing = dict.fromkeys(("jobs", "runs", "data", "blobs", "programs", "bytes"), 0)
    assert kept.client().collect(older_than=3600) == nothing  # all of it is recent
    # `old` is a child of a driver still running: its tree is live, and so are the uploads
    # that the running and the held job read.
    assert kept.client().collect(older_than=0) == nothing
    assert live.wait(timeout=30).state == "succeeded" and held.wait(timeout=30).state == "succeeded"
    assert held.logs() == "held input\n"
    client.close()

    would = kept.client().collect(older_than=0, dry_run=True)
    assert kept.client().get(old.uuid).state == "succeeded" and old_run.exists()  # a dry run removes nothing
    done = kept.client().collect(older_than=0)
    assert {k: done[k] for k in nothing if k != "bytes"} == {k: would[k] for k in nothing if k != "bytes"}
    assert done["jobs"] == 4 and done["runs"] == 4 and done["blobs"] == 5 and done["bytes"] > 0, done
    with pytest.raises(jobnest.NotFound):
        kept.client().get(old.uuid)
    assert not old_run.exists()
    assert files(home, "data/blobs") < blobs_before
    assert kept.client().get(pinned.uuid).state == "succeeded"  # pinned: its tree, run and output stay
    assert (pinned.output.download(tmp_path / "pinned") / "keep").read_text() == "pinned-out\n"
    assert kept.client().collect(older_than=0) == nothing

    kept.client().pin(pinned.uuid, unpin=True)
    assert kept.client().collect(older_than=0)["jobs"] == 1
    assert files(home, "data/blobs") == set() and files(home, "data/manifests") == set()
    again = kept.client().submit(["sh", "-c", "echo pinned-out > {output}/keep"], name="pinned").wait(timeout=30)
    assert again.state == "succeeded" and not again.info.reused  # its run is gone: it runs anew


def test_gc_keeps_the_job_that_made_a_run_still_wanted(kept: Running) -> None:
    """A job cancelled alone, while its run goes on for another job, ended long ago; its run is
    live, so its tree stays (the run is found by the job that made it)."""
    client = kept.client()
    first = client.submit(["sleep", "2"], name="shared")
    second = client.submit(["sleep", "2"], name="shared")
    assert second.info.run_uuid == first.info.run_uuid
    first.cancel()
    assert first.wait(timeout=10).state == "cancelled"
    assert client.collect(older_than=0)["jobs"] == 0
    assert second.wait(timeout=30).state == "succeeded"
    done = client.collect(older_than=0)
    assert (done["jobs"], done["runs"]) == (2, 1)


def test_gc_and_pin_are_refused_where_they_must_be(kept: Running, tmp_path: Path) -> None:
    admin = kept.client()
    alice = kept.client(admin.create_token("alice"))
    bob = kept.client(admin.create_token("bob"))
    job = alice.submit(["true"]).wait(timeout=30)
    with pytest.raises(jobnest.PermissionDenied, match="only an admin"):
        alice.collect(older_than=0)
    with pytest.raises(jobnest.PermissionDenied):
        bob.pin(job.uuid)
    with pytest.raises(jobnest.InvalidSpec, match="older_than"):
        admin.collect(older_than=-1)
    with pytest.raises(jobnest.NotFound):
        alice.pin("0" * 32)
    alice.pin(job.uuid)
    assert admin.collect(older_than=0)["jobs"] == 0 and alice.get(job.uuid).state == "succeeded"
    assert bob.status()["disk"] == {}  # the controller's disk is an admin's business
    disk = admin.status()["disk"]
    assert set(disk) == {"blobs", "data", "programs", "runs"} | ({"store"} if kept.store.is_sqlite else set())
    assert all(n > 0 for n in disk.values()), disk


def test_the_cli_collects_and_status_shows_disk_use(kept: Running) -> None:
    kept.client().submit(["sh", "-c", "head -c 300000 /dev/urandom > {output}/noise"]).wait(timeout=30)
    assert "disk: blobs " in cli(kept, "status").stdout
    assert json.loads(cli(kept, "status", "--json").stdout)["disk"]["blobs"] >= 300000
    dry = cli(kept, "gc", "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("would remove 1 jobs, 1 runs, 1 data, 1 blobs"), dry
    done = json.loads(cli(kept, "gc", "--older-than", "0s", "--json").stdout)
    assert done["jobs"] == 1 and done["bytes"] >= 300000
    assert json.loads(cli(kept, "status", "--json").stdout)["disk"]["blobs"] < 300000
    bad = cli(kept, "gc", "--older-than", "soon")
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr


def test_the_retention_setting_collects_at_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    first = Controller(settings)
    first.start()
    try:
        job = Running(first).client().submit(["sh", "-c", "echo x > {output}/x"]).wait(timeout=30)
        run_folder = Path(job.info.output_dir).parent
    finally:
        first.stop(grace=0)
    assert run_folder.exists()
    time.sleep(1.1)
    settings.retention = 1.0
    second = Controller(settings)
    second.start()
    try:
        wait_for(lambda: not run_folder.exists(), timeout=20)
        with pytest.raises(jobnest.NotFound):
            Running(second).client().get(job.uuid)
    finally:
        second.stop(grace=0)
