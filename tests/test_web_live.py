"""The monitor's live trees (`jobnest.web.live.Hub`) against a real controller: listed once, kept
current by one Watch, roll-up counts right after changes and after a burst of new jobs."""

import time
from pathlib import Path

import pytest

from jobnest.web import live

from .conftest import Running, wait_for


def test_a_tree_is_listed_once_and_its_counts_follow_changes_and_new_jobs(running: Running, tmp_path: Path) -> None:
    driver = running.client(driver=True)
    gate = tmp_path / "go"
    first = driver.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], cpu=0.1)
    top = driver.driver.uuid  # type: ignore[union-attr]
    hub = live.Hub(running.client())
    try:
        tree = hub.tree(top)
        wait_for(lambda: tree.counts[top].get("running") == 1)
        few = driver.submit_many([driver.spec(["true", str(i)], cpu=0.1) for i in range(3)])  # fetched one by one
        many = driver.submit_many([driver.spec(["true", "after", str(i)], cpu=0.01, when=first.succeeded)
                                   for i in range(live.FEW + 1)])  # the tree is listed again
        wait_for(lambda: len(hub.trees[top].children[top]) == 1 + len(few) + len(many))
        tree = hub.trees[top]
        assert tree.children[top] == [first.uuid, *(j.uuid for j in few), *(j.uuid for j in many)]  # submit order
        wait_for(lambda: hub.trees[top].counts[top] == {"running": 1, "succeeded": 3, "queued": live.FEW + 1})
        seq = hub.seq
        gate.touch()
        wait_for(lambda: hub.trees[top].jobs[first.uuid].state == "succeeded")
        assert first.uuid in (hub.touched_since(seq) or ())
        assert hub.touched_since(hub.seq + 5) is None  # a tick not made yet: start again
    finally:
        hub.close()
        driver.close()


def test_a_job_the_token_may_not_see_is_no_tree_and_the_oldest_trees_give_way(running: Running,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    admin = running.client()
    alice = running.client(admin.create_token("alice"))
    hers = alice.submit(["true"], cpu=0.1)
    mine = [admin.submit(["true", str(i)], cpu=0.1) for i in range(3)]
    bob = live.Hub(running.client(admin.create_token("bob")))
    hub = live.Hub(admin)
    monkeypatch.setattr(live, "MAX_TOPS", 2)
    try:
        with pytest.raises(Exception) as seen:
            bob.tree(hers.uuid)
        assert type(seen.value).__name__ in ("NotFound", "PermissionDenied")
        for job in mine[:2]:
            assert set(hub.trees_of([job.uuid])) == {job.uuid}
        assert set(hub.trees_of([mine[2].uuid])) == {mine[2].uuid}
        wait_for(lambda: mine[0].uuid not in hub.trees)  # the one asked for longest ago
        assert mine[1].uuid in hub.trees and "at once" in hub.failed[mine[0].uuid].problem
    finally:
        hub.close()
        bob.close()


def test_a_watch_that_ends_by_itself_is_opened_again_and_a_prefix_is_no_top(running: Running,
                                                                          tmp_path: Path) -> None:
    client = running.client()
    gate = tmp_path / "go"
    job = client.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], cpu=0.1)
    hub = live.Hub(client)
    try:
        started = time.monotonic()
        assert hub.trees_of([job.uuid[:8]]) == {}  # at once: a second name for a tree would never be on
        assert time.monotonic() - started < 1 and hub.failed[job.uuid[:8]].field == "tops"
        hub.tree(job.uuid)
        first = hub._stream
        assert first is not None
        first.cancel()  # as when the controller ends it: nothing asked for a restart
        wait_for(lambda: hub._stream is not first and hub._watched == (job.uuid,))
        gate.touch()
        wait_for(lambda: hub.trees[job.uuid].jobs[job.uuid].state == "succeeded")
    finally:
        hub.close()
