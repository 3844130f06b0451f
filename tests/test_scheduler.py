"""The scheduler as a pure function of nodes and a queue: no server, no store."""

from jobnest_controller.scheduler import Node, Pending, Queue, plan, reason


def queue(*runs: Pending) -> Queue:
    q = Queue()
    for run in runs:
        q.add(run)
    return q


def placed(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [uuid for uuid, _ in result.placements]


def test_priority_then_submit_order() -> None:
    nodes = [Node("n", 1000, 2**30)]
    q = queue(Pending("late", 600, 0, 0, 2), Pending("early", 600, 0, 0, 1), Pending("urgent", 600, 0, 5, 3))
    result = plan(nodes, q)
    assert result.placements == [("urgent", "n")]
    assert len(q) == 3  # the queue is not changed: the reconciler takes placed runs out


def test_best_fit_picks_the_tightest_node() -> None:
    nodes = [Node("big", 4000, 2**30), Node("small", 1000, 2**30, cpu_used=500)]
    assert plan(nodes, queue(Pending("r", 500, 0))).placements == [("r", "small")]


def test_never_over_commits_and_backfills_smaller_runs() -> None:
    nodes = [Node("n", 2000, 2**30, cpu_used=1500)]
    q = queue(Pending("big", 1000, 0, 0, 1), Pending("a", 250, 0, 0, 2), Pending("b", 250, 0, 0, 3),
              Pending("c", 250, 0, 0, 4))
    assert placed(plan(nodes, q)) == ["a", "b"]
    assert nodes[0].cpu_used == 1500  # the snapshot is not changed


def test_a_run_deep_in_a_large_queue_that_fits_is_placed() -> None:
    nodes = [Node("n", 2000, 2**30, cpu_used=1500)]
    q = queue(*(Pending(f"big{i}", 1000, 0, 0, i) for i in range(100_000)), Pending("small", 100, 0, 0, 100_000))
    assert placed(plan(nodes, q)) == ["small"]


def test_owners_share_capacity_whoever_submitted_first() -> None:
    nodes = [Node("n", 4000, 2**30)]
    q = queue(*(Pending(f"a{i}", 500, 0, 0, i, "alice") for i in range(20)),
              *(Pending(f"b{i}", 500, 0, 0, 100 + i, "bob") for i in range(20)))
    result = plan(nodes, q)
    assert sorted(placed(result)) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    # alice already runs 2 cores: bob gets what frees up until he has as much
    assert placed(plan([Node("n", 4000, 2**30, cpu_used=2000)], q, usage={"alice": 2000})) == ["b0", "b1", "b2", "b3"]


def test_priority_orders_one_owners_own_runs_only() -> None:
    nodes = [Node("n", 1000, 2**30)]
    q = queue(Pending("a-low", 500, 0, 0, 1, "alice"), Pending("a-high", 500, 0, 9, 2, "alice"),
              Pending("b", 500, 0, 0, 3, "bob"))
    assert sorted(placed(plan(nodes, q))) == ["a-high", "b"]


def test_a_blocked_run_that_waited_long_keeps_a_node_free_for_itself() -> None:
    nodes = [Node("n1", 2000, 2**30, cpu_used=1500), Node("n2", 2000, 2**30, cpu_used=1000)]
    q = queue(Pending("big", 2000, 0, 0, 1, ready_at=0.0), Pending("small", 250, 0, 0, 2, ready_at=50.0))
    early = plan(nodes, q, now=10.0, reserve_after=30.0)
    assert placed(early) == ["small"] and early.reserved is None  # not waited long: small ones backfill
    late = plan(nodes, q, now=40.0, reserve_after=30.0)
    assert late.reserved == ("n2", "big")  # the node with most free is drained for it
    assert late.placements == [("small", "n1")]
    assert reason(late.nodes, (250, 0), late.reserved).startswith("waiting: node n2 is kept free for run big")
    # once it fits, it goes before anything else
    assert placed(plan([Node("n", 2000, 2**30)], q, now=40.0, reserve_after=30.0))[0] == "big"


def test_reasons_name_the_exhausted_dimension() -> None:
    nodes = [Node("n", 2000, 2**30, cpu_used=1750)]
    assert reason(nodes, (500, 0)) == "waiting for cpu: needs 0.5 cores, most free is 0.25 of 2 on n"
    assert reason(nodes, (100, 2**31)).startswith("waiting for memory: needs 2.00 GiB")
    assert reason([], (1, 0)) == "waiting: no node is available"
    assert plan([], queue(Pending("x", 1, 0))).placements == []
