"""One store suite, run against SQLite and against a throwaway PostgreSQL."""

import json
import threading
from pathlib import Path

import pytest

from jobnest.errors import Conflict, InvalidSpec, JobnestError, NotFound, Unauthenticated, Unavailable
from jobnest_controller.states import State
from jobnest_controller.store import Caller, Kind, Store, hash_token
from jobnest_controller import auth, submit, views
from jobnest_controller import store as store_module

from .conftest import new_database

ADMIN = Caller("admin", "alice")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobnest.db'}"
    else:
        url = new_database(request.getfixturevalue("postgres_url"), tmp_path)
    s = Store(url)
    yield s
    s.close()


def spec(*argv: str, **extra):  # type: ignore[no-untyped-def]
    return {"name": argv[0], "argv": list(argv), "env": {}, "cwd": "", "image": "", "cpu_millis": 250,
            "memory": 0, "priority": 0, "executor": "local", "timeout": 0, "cache_version": "",
            "labels": {}, "no_reuse": False, **extra}


def ids(submitted: tuple[list[dict], str | None]) -> list[str]:  # type: ignore[type-arg]
    return [job["uuid"] for job in submitted[0]]


def finish_run(store: Store, run_uuid: str, state: State, exit_code: int | None = 0) -> None:
    with store.write() as tx:
        assert store.transition(tx, Kind.RUN, run_uuid, State.QUEUED, State.RUNNING, "")
        assert store.transition(tx, Kind.RUN, run_uuid, State.RUNNING, state, "done", exit_code=exit_code)


def test_submit_stores_jobs_with_provenance(store: Store) -> None:
    [parent] = ids(store.submit(ADMIN, "", [spec("runner")], 1.0))
    path = store.job_path(parent)
    child_caller = Caller("job", "alice", parent, path)
    [child] = ids(store.submit(child_caller, "", [spec("echo", "hi")], 2.0))
    row = store.get_job(child)
    assert row["spawned_by_job_uuid"] == parent
    assert row["path"].startswith(path) and row["path"].count("/") == path.count("/") + 1
    assert row["state"] == "queued" and row["owner"] == "alice"


def test_reuse_prefers_succeeded_then_in_flight_never_failed(store: Store) -> None:
    [a] = ids(store.submit(ADMIN, "", [spec("echo", "x")], 1.0))
    [b] = ids(store.submit(ADMIN, "", [spec("echo", "x")], 2.0))
    ja, jb = store.get_job(a), store.get_job(b)
    assert jb["reused"] and jb["run_uuid"] == ja["run_uuid"]  # attaches to the queued run

    finish_run(store, ja["run_uuid"], State.FAILED, 1)
    [c] = ids(store.submit(ADMIN, "", [spec("echo", "x")], 3.0))
    jc = store.get_job(c)
    assert not jc["reused"] and jc["run_uuid"] != ja["run_uuid"]  # a failed run is never reused

    finish_run(store, jc["run_uuid"], State.SUCCEEDED)
    [d] = ids(store.submit(ADMIN, "", [spec("echo", "x")], 4.0))
    jd = store.get_job(d)
    assert jd["reused"] and jd["run_uuid"] == jc["run_uuid"] and jd["state"] == "succeeded"
    assert jd["exit_code"] == 0

    [e] = ids(store.submit(ADMIN, "", [spec("echo", "x", no_reuse=True)], 5.0))
    assert store.get_job(e)["run_uuid"] not in (ja["run_uuid"], jc["run_uuid"])


def test_resources_are_not_in_the_signature(store: Store) -> None:
    """Jobs that differ in resources share a run; in flight, only if a memory limit (which can
    end the run) is the same."""
    [a] = ids(store.submit(ADMIN, "", [spec("echo", "y", cpu_millis=100)], 1.0))
    [b] = ids(store.submit(ADMIN, "", [spec("echo", "y", cpu_millis=900)], 1.0))
    [c] = ids(store.submit(ADMIN, "", [spec("echo", "y", env={"A": "1"})], 1.0))
    [d] = ids(store.submit(ADMIN, "", [spec("echo", "y", memory=2**20)], 1.0))
    runs = [store.get_job(u)["run_uuid"] for u in (a, b, c, d)]
    assert runs[0] == runs[1] and len({runs[0], runs[2], runs[3]}) == 3
    finish_run(store, runs[0], State.SUCCEEDED)
    [e] = ids(store.submit(ADMIN, "", [spec("echo", "y", cpu_millis=900, memory=2**20)], 2.0))
    assert store.get_job(e)["run_uuid"] == runs[0]  # a success serves any job


def test_request_id_makes_retries_create_nothing(store: Store) -> None:
    first = ids(store.submit(ADMIN, "req-1", [spec("a"), spec("b")], 1.0))
    again = ids(store.submit(ADMIN, "req-1", [spec("a"), spec("b")], 2.0))
    assert first == again
    assert sum(len(c) for c in store.list_jobs()) == 2


def test_concurrent_submits_each_get_their_own_jobs_and_a_refusal_stays_alone(store: Store) -> None:
    """Eight threads submit at once, so their submits are committed in groups: each caller gets
    back its own jobs, and the one refused (a cycle through its batch-local references) is
    refused alone, with nothing of it stored."""
    results: dict[int, object] = {}
    start = threading.Barrier(8)
    cycle = [spec("c1", when={"job": "@1", "is": "done"}), spec("c2", when={"job": "@0", "is": "done"})]

    def submit(i: int) -> None:
        start.wait()
        try:
            results[i] = ids(store.submit(ADMIN, f"req-{i}", cycle if i == 3 else [spec("echo", str(i))], 1.0))
        except InvalidSpec as e:
            results[i] = e

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[3], InvalidSpec) and "cycle" in str(results[3])
    for i in set(range(8)) - {3}:
        [job] = results[i]  # type: ignore[misc]
        assert json.loads(store.get_job(job)["spec"])["argv"] == ["echo", str(i)]
    assert sum(len(c) for c in store.list_jobs()) == 7


def test_transition_is_compare_and_set(store: Store) -> None:
    [a] = ids(store.submit(ADMIN, "", [spec("x")], 1.0))
    run = store.get_job(a)["run_uuid"]
    with store.write() as tx:
        assert store.transition(tx, Kind.RUN, run, State.QUEUED, State.RUNNING, "")
        assert not store.transition(tx, Kind.RUN, run, State.QUEUED, State.RUNNING, "")  # no longer queued
        with pytest.raises(ValueError):
            store.transition(tx, Kind.RUN, run, State.RUNNING, State.RUNNING, "")  # not in the table
    assert store.get_job(a)["state"] == "running"  # the job moved with its run


def test_cancel_subtree_keeps_runs_other_jobs_want(store: Store) -> None:
    [root] = ids(store.submit(ADMIN, "", [spec("runner")], 1.0))
    caller = Caller("job", "alice", root, store.job_path(root))
    [shared, own] = ids(store.submit(caller, "", [spec("shared"), spec("own")], 2.0))
    [outsider] = ids(store.submit(ADMIN, "", [spec("shared")], 3.0))  # reuses the same run
    cancelled = store.cancel(root, "stop", 4.0)
    assert set(cancelled) == {root, shared, own}
    assert {store.get_job(u)["state"] for u in (root, shared, own)} == {"cancelled"}
    kept = store.get_job(outsider)
    assert kept["state"] == "queued" and kept["run_state"] == "queued"
    assert "with job" in store.get_job(own)["reason"]


def test_a_large_cancel_goes_a_chunk_at_a_time_and_keeps_what_others_want(store: Store,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel in chunks of two jobs ends all seven of the subtree, each once; the run an
    outside job shares stays queued for it, and the runs only the subtree wanted are cancelled,
    though jobs wanting them fell into different chunks."""
    monkeypatch.setattr(store_module, "CANCEL_CHUNK", 2)
    [root] = ids(store.submit(ADMIN, "", [spec("runner")], 1.0))
    caller = Caller("job", "alice", root, store.job_path(root))
    children = ids(store.submit(caller, "", [spec("shared"), spec("mine"), spec("mine"), spec("a"), spec("b"),
                                             spec("shared")], 2.0))
    [outsider] = ids(store.submit(ADMIN, "", [spec("shared")], 3.0))
    assert sorted(store.cancel(root, "stop", 4.0)) == sorted([root, *children])
    assert {store.get_job(u)["state"] for u in (root, *children)} == {"cancelled"}
    assert store.get_job(children[1])["run_state"] == "cancelled"  # "mine": wanted only inside
    kept = store.get_job(outsider)
    assert (kept["state"], kept["run_state"]) == ("queued", "queued")
    assert store.cancel(root, "again", 5.0) == []


def test_list_by_subtree_parent_and_state(store: Store) -> None:
    [root, other] = ids(store.submit(ADMIN, "", [spec("r1"), spec("r2")], 1.0))
    caller = Caller("job", "alice", root, store.job_path(root))
    [c1, c2] = ids(store.submit(caller, "", [spec("c1"), spec("c2")], 2.0))
    [g] = ids(store.submit(Caller("job", "alice", c1, store.job_path(c1)), "", [spec("g")], 3.0))
    flat = lambda **kw: [r.uuid for chunk in store.list_jobs(chunk=2, **kw) for r in chunk]  # noqa: E731
    assert flat(subtree_path=store.job_path(root)) == [root, c1, g, c2]  # tree order
    assert flat(parent=root) == [c1, c2]
    assert flat(roots=True) == [root, other]
    finish_run(store, store.get_job(c2)["run_uuid"], State.SUCCEEDED)
    assert flat(states=["succeeded"]) == [c2]


def test_tokens(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module.secrets, "token_urlsafe", lambda n: "fixed-token-for-test")
    [a] = ids(store.submit(ADMIN, "", [spec("x")], 1.0))
    run = store.get_job(a)["run_uuid"]
    with store.write() as tx:
        store.transition(tx, Kind.RUN, run, State.QUEUED, State.RUNNING, "")
        token = store.new_run_tokens(tx, {run: "/nowhere"})[run]
    caller = store.authenticate(token, 2.0)
    assert caller.kind == "job" and caller.job_uuid == a
    with store.write() as tx:
        store.transition(tx, Kind.RUN, run, State.RUNNING, State.SUCCEEDED, "", exit_code=0)
    with pytest.raises(Unauthenticated, match="expired"):
        store.authenticate(token, 2.0)
    user = store.create_user_token("bob", 1.0)
    assert store.authenticate(user, 2.0) == Caller("user", "bob")
    with pytest.raises(Unauthenticated, match="not recognised"):
        store.authenticate("nope-" + user, 2.0)
    assert hash_token(user) != user


def test_a_cancelled_job_s_token_dies_though_its_run_goes_on_for_another_job(store: Store) -> None:
    [a] = ids(store.submit(ADMIN, "", [spec("runner")], 1.0))
    [b] = ids(store.submit(ADMIN, "", [spec("runner")], 2.0))  # attached to a's run
    run = store.get_job(a)["run_uuid"]
    with store.write() as tx:
        store.transition(tx, Kind.RUN, run, State.QUEUED, State.RUNNING, "")
        token = store.new_run_tokens(tx, {run: "/nowhere"})[run]
    assert store.authenticate(token, 3.0).job_uuid == a
    store.cancel(a, "not wanted", 4.0)
    assert store.get_job(b)["state"] == "running"  # b still wants the run
    with pytest.raises(Unauthenticated, match=f"job {a} was cancelled"):
        store.authenticate(token, 5.0)  # else it would go on adding children under a cancelled job


def test_user_tokens_are_unique_by_name_expire_and_can_be_revoked(store: Store) -> None:
    bob = store.create_user_token("bob", 1.0, expires_at=100.0)
    with pytest.raises(Conflict, match="a token named 'bob' exists"):
        store.create_user_token("bob", 2.0)
    assert store.authenticate(bob, 99.0) == Caller("user", "bob")
    with pytest.raises(Unauthenticated, match="'bob' has expired"):
        store.authenticate(bob, 100.0)
    assert store.user_tokens() == [{"name": "bob", "created_at": 1.0, "expires_at": 100.0}]
    store.revoke_user_token("bob")
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(bob, 50.0)
    with pytest.raises(NotFound, match="no token named 'bob'"):
        store.revoke_user_token("bob")
    assert store.authenticate(store.create_user_token("bob", 3.0), 4.0) == Caller("user", "bob")  # a new one


def test_data_is_readable_within_its_senders_scope(store: Store) -> None:
    """Blobs count as held by the owner that sent them; an upload's manifest by the scope that sent it."""
    alice, bob = Caller("user", "alice"), Caller("user", "bob")
    runner = Caller("job", "alice", "f" * 32, "/0001/", "r" * 32)
    blob, manifest, theirs = "a" * 64, "b" * 64, "c" * 64
    store.hold(alice, [blob, manifest])
    store.hold(runner, [theirs])
    assert store.held(alice, [blob, theirs, "d" * 64]) == {blob, theirs}  # held by the owner
    assert store.held(bob, [blob, theirs]) == set()
    assert store.held(ADMIN, [blob]) == {blob}
    assert store.may_read(alice, manifest) and store.may_read(alice, theirs)
    assert not store.may_read(runner, manifest)  # sent by alice outside the runner's subtree
    assert store.may_read(runner, theirs) and not store.may_read(bob, manifest)


def test_unknown_job(store: Store) -> None:
    with pytest.raises(NotFound, match="uuid"):
        store.get_job("0" * 32)
    with pytest.raises(NotFound):
        store.cancel("0" * 32, "x", 1.0)


def test_an_older_store_is_refused_by_name(tmp_path: Path) -> None:
    import sqlite3
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("CREATE TABLE runs (seq INTEGER PRIMARY KEY, uuid TEXT)")
    with pytest.raises(JobnestError, match="table runs lacks .*signature"):
        Store(f"sqlite:///{tmp_path / 'old.db'}")


def test_path_keys_sort_in_the_order_they_were_made_and_uuids_do_not(store: Store) -> None:
    keys = store.path_keys
    made = list(keys.take(3, 5.0)) + list(keys.take(70000, 5.0)) + list(keys.take(2, 4.0))
    assert made == sorted(made) and len(set(made)) == len(made)
    uuids = ids(store.submit(ADMIN, "", [spec("echo", str(i)) for i in range(50)], 1.0))
    assert len({u[:8] for u in uuids}) == 50  # short ids tell jobs apart


def test_statements_over_keys_are_planned_on_the_keys(tmp_path: Path) -> None:
    """Every statement over a list of uuids or signatures looks its rows up by them. SQLite's
    planner, which has no statistics, otherwise takes the index on a run's state for five keys
    or more, and reads every queued run of the backlog to find those five."""
    store = Store(f"sqlite:///{tmp_path}/db")
    keyed = [value for module in (store_module, submit, views, auth) for value in vars(module).values()
             if isinstance(value, views.ByKeys)]
    keyed += [store._update(kind, ("finished_at",)) for kind in Kind]
    assert len(keyed) >= 8
    with store.read() as conn:
        for by_keys in keyed:
            params = by_keys.many.statement.compile().params
            unset = dict.fromkeys(name for name, value in params.items() if value is None and name != "keys")
            sql, args = by_keys.many.render(conn.dialect, unset, [f"k{i}" for i in range(20)])
            plan = " | ".join(row[-1] for row in views.raw(conn, f"EXPLAIN QUERY PLAN {sql}", args))
            assert "ix_runs_state" not in plan and "SCAN" not in plan, f"{sql}\n-> {plan}"


def test_a_store_that_cannot_be_reached_is_unavailable_not_an_unknown_error(tmp_path: Path) -> None:
    """Callers may retry an UNAVAILABLE; a database that cannot be opened said UNKNOWN."""
    db = tmp_path / "jobnest.db"
    store = Store(f"sqlite:///{db}")
    [job] = ids(store.submit(ADMIN, "", [spec("true")], 1.0))
    store.close()
    db.rename(tmp_path / "elsewhere.db")
    db.mkdir()  # what is there now is no database
    with pytest.raises(Unavailable, match="store is unavailable"):
        store.get_job(job)


def test_one_store_one_active_controller_fenced_by_the_lease_epoch(store: Store) -> None:
    """Two controllers on one store both served (24 of 100 jobs ran twice); now one holds the
    lease, the other waits until it lapses, and the one that lost it can no longer write."""
    from jobnest_controller.lease import LEASE
    other = Store(store.url)
    try:
        assert store.lead("a", 1.0) and store.epoch == 1
        assert not other.lead("b", 1.0 + LEASE / 2) and other.epoch is None
        assert store.renew(2.0)  # now it lasts to 2 + LEASE
        assert not other.lead("b", 1.0 + LEASE + 0.5)
        ids(store.submit(ADMIN, "", [spec("x")], 3.0))
        assert other.lead("b", 2.0 + LEASE + 0.5) and other.epoch == 2  # lapsed: taken over
        with pytest.raises(Unavailable, match="another controller is active"):
            store.submit(ADMIN, "", [spec("y")], 4.0)
        assert not store.renew(5.0)
        assert [r.name for chunk in other.list_jobs() for r in chunk] == ["x"]  # the refused write left nothing
        ids(other.submit(ADMIN, "", [spec("z")], 6.0))
        assert store.lead("a", 7.0) is False  # held, and not lapsed
        other.release_lease()
        assert store.lead("a", 7.0) and store.epoch == 3
    finally:
        other.close()
