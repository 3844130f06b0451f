"""Scheduler v0 as a pure function: no server, no store."""

from jobnest_controller.scheduler import Node, Pending, plan


def test_priority_then_submit_order() -> None:
    nodes = [Node("n", 1000, 2**30)]
    pending = [Pending("late", 600, 0, 0, 2), Pending("early", 600, 0, 0, 1), Pending("urgent", 600, 0, 5, 3)]
    result = plan(nodes, pending)
    assert result.placements == [("urgent", "n")]
    assert set(result.unplaced) == {"early", "late"}


def test_best_fit_picks_the_tightest_node() -> None:
    nodes = [Node("big", 4000, 2**30), Node("small", 1000, 2**30, cpu_used=500)]
    assert plan(nodes, [Pending("r", 500, 0)]).placements == [("r", "small")]


def test_never_over_commits_and_backfills_smaller_runs() -> None:
    nodes = [Node("n", 2000, 2**30, cpu_used=1500)]
    pending = [Pending("big", 1000, 0, 0, 1), Pending("a", 250, 0, 0, 2), Pending("b", 250, 0, 0, 3),
               Pending("c", 250, 0, 0, 4)]
    result = plan(nodes, pending)
    assert [u for u, _ in result.placements] == ["a", "b"]
    assert set(result.unplaced) == {"big", "c"}
    assert nodes[0].cpu_used == 1500  # the snapshot is not changed


def test_reasons_name_the_exhausted_dimension() -> None:
    nodes = [Node("n", 2000, 2**30, cpu_used=1750)]
    result = plan(nodes, [Pending("cpu", 500, 0), Pending("mem", 100, 2**31)])
    assert result.unplaced["cpu"] == "waiting for cpu: needs 0.5 cores, most free is 0.25 of 2 on n"
    assert result.unplaced["mem"].startswith("waiting for memory: needs 2.00 GiB")
    assert plan([], [Pending("x", 1, 0)]).unplaced["x"] == "waiting: no node is available"
