"""The reconciler: moves runs toward what the store says they should be.

Each `tick(now)` observes running runs (exits, cancels, timeouts, dead drivers), records their
ends and how the last pass's starts went, decides the conditions those ends settle, plans where
queued runs go and claims them, all in one write transaction; then it starts what it claimed
(containers and Pods on threads of its own, while the next passes go on). The controller calls
it in a loop; tests call it directly with their own clock.

What it decides from is kept in memory (`Index`): each executor's queue of ready runs, the held
runs and the conditions they wait on. It is loaded from the store at the first pass and changed by
the writes that change the store (the store publishes the runs each write touched, and job ends),
so a pass costs what happened, not the size of the backlog. After a crash, or a pass that failed,
it is loaded again: the store stays the truth.
"""

import contextlib
import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jobnest.errors import Unavailable

from .conditions import Decision, Tracker, jobs_of
from .data import CorruptData, Data
from .executors.base import Executor, Exited, Launch, Started
from .programs import Programs
from .scheduler import Node, Pending, Plan, Queue, charge_all, plan, reason
from .states import Kind, State
from .store import CANNOT, DRIVER, Store, Tx

log = logging.getLogger(__name__)
STARTS_AT_ONCE = 8  # runs started concurrently: a container takes ~0.5 s to start, mostly waiting
LOG_CHECK = 0.25  # seconds between looks at the size of running runs' logs
STORES_AT_ONCE = 2  # outputs stored concurrently: hashing and copying, bound by the disk
HELD = "waiting for its condition: the jobs it waits on (when=, inputs=) have not ended"  # `Get` says which
# Conditions applied in one write at most (each a few statements): the rest wait for the next
# pass, and submits go on in between. The ends they cause are heard again from the bus.
SETTLED_AT_ONCE = 500


@dataclasses.dataclass(slots=True)
class Held:
    executor: str
    run: Pending
    job: str  # the job whose condition holds the run


class Index:
    """The queued runs as the reconciler decides from them: ready ones in each executor's queue,
    held ones with their conditions in a tracker."""

    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}
        self.where: dict[str, str] = {}  # ready run -> its executor
        self.held: dict[str, Held] = {}
        self.tracker = Tracker()

    def __len__(self) -> int:
        return len(self.where) + len(self.held)

    def queue(self, executor: str) -> Queue:
        return self.queues.setdefault(executor, Queue())

    def ready(self, executor: str, run: Pending) -> None:
        if run.uuid not in self.where:
            self.where[run.uuid] = executor
            self.queue(executor).add(run)

    def forget(self, uuid: str) -> None:
        executor = self.where.pop(uuid, None)
        if executor is not None:
            self.queues[executor].remove(uuid)
        if self.held.pop(uuid, None) is not None:
            self.tracker.discard(uuid)


class Reconciler:
    def __init__(self, store: Store, executors: dict[str, Executor], controller_address: str,
                 programs: Programs, data: Data, max_log: int = 0) -> None:
        self.store = store
        self.max_log = max_log  # bytes of stdout and stderr a run may write; 0: no limit
        self._logs_checked, self._check_logs = 0.0, False
        self.programs = programs
        self.data = data
        self.executors = executors
        self.controller_address = controller_address
        self.host = socket.gethostname()
        # Subscribed before the index is loaded, so that no change falls between.
        self._touched = store.bus.subscribe_runs()
        self._changes = store.bus.subscribe()
        self._index: Index | None = None  # loaded at the first pass
        self._decided: list[Decision] = []  # conditions settled, to apply in the next write
        self._plans: dict[str, Plan] = {}  # the last plan of each executor, for the reasons runs wait
        self._reasons: dict[tuple[str, tuple[int, int]], str] = {}
        # Runs whose job waits on jobs of its own subtree (a runner in `wait()`): their cpu is
        # lent to those jobs meanwhile, or a runner holding every core would wait forever.
        self._lent: dict[str, int] = {}
        self._lent_lock = threading.Lock()
        # Claimed runs of slow starters start on these threads, several at once, while the passes
        # go on (a fork here is quicker than handing it to a thread); all are heard of next pass.
        self._pool = ThreadPoolExecutor(STARTS_AT_ONCE, thread_name_prefix="start")
        self._starting: dict[str, Future[Started | Exception]] = {}
        self._store_pool = ThreadPoolExecutor(STORES_AT_ONCE, thread_name_prefix="store-output")
        self.notify: Callable[[], None] = lambda: None  # the controller's: look again now
        # Succeeded runs whose output is being stored, with how they ended.
        self._storing: dict[str, tuple[Future[tuple[str, str]], tuple[dict[str, Any], State, Exited]]] = {}
        # Runs this reconciler wrote that left or never were in the index (claimed, started,
        # ended): their change needs no reading back.
        self._mine: set[str] = set()
        self._stopped: dict[str, str] = {}  # queued runs asked to stop, and why: to end
        self._unobservable: set[str] = set()  # runs whose observing raised, logged once

    # -- what the server asks ------------------------------------------------------------------

    def waiting_reason(self, run_uuid: str) -> str:
        """Why a queued run has not started, or "" if the reconciler has not looked at it yet."""
        index = self._index
        if index is None:
            return ""
        if run_uuid in index.held:
            return HELD
        name = index.where.get(run_uuid)
        run = index.queues[name].runs.get(run_uuid) if name is not None else None
        last = self._plans.get(name or "")
        if run is None or name is None:
            return ""
        if name not in self.executors:
            return f"waiting: no executor named {name!r} is configured"
        if last is None:
            return ""
        if not last.nodes:
            return self.executors[name].why_no_nodes()
        key = (name, run.shape)
        if key not in self._reasons:
            self._reasons[key] = reason(last.nodes, run.shape, last.reserved)
        return self._reasons[key]

    def lend(self, run_uuid: str, delta: int) -> None:
        """The job of `run_uuid` began (+1) or ended (-1) a wait on jobs of its own subtree."""
        with self._lent_lock:
            count = self._lent.get(run_uuid, 0) + delta
            if count > 0:
                self._lent[run_uuid] = count
            else:
                self._lent.pop(run_uuid, None)

    def lends(self, run_uuid: str) -> bool:
        return run_uuid in self._lent

    # -- a pass --------------------------------------------------------------------------------

    def tick(self, now: float) -> int:
        """One pass; returns the number of runs still live (queued, held or running)."""
        try:
            return self._tick(now)
        except Exception:
            self._index = None  # it may no longer match the store: load it afresh next pass
            raise

    def _tick(self, now: float) -> int:
        index = self._absorb()
        starts = {uuid: start.result() for uuid, start in self._starting.items() if start.done()}
        active = self.store.active_runs()
        for run in active:  # a start just heard of is not stored yet
            if isinstance(outcome := starts.get(run["uuid"]), Started):
                run.update(pid=outcome.pid, handle=outcome.handle, workdir=outcome.workdir)
        stored = {uuid: storing for uuid, storing in self._storing.items() if storing[0].done()}
        self._check_logs = now - self._logs_checked >= LOG_CHECK  # their sizes: not at every pass
        if self._check_logs:
            self._logs_checked = now
        ended = self._observe([run for run in active if (run["uuid"] in starts or run["uuid"] not in self._starting)
                               and run["uuid"] not in self._storing], now)
        # A succeeded run's output is stored on a thread of its own, as a million small files take a
        # minute: the run ends at the first pass after, and meanwhile no other waits for it.
        for end in ended:
            if end[1] is State.SUCCEEDED:
                future = self._store_pool.submit(self._store_output, end[0])
                future.add_done_callback(lambda _: self.notify())  # its end is recorded at the next pass: now
                self._storing[end[0]["uuid"]] = (future, end)
        ended = [end for end in ended if end[1] is not State.SUCCEEDED] + [end for _, end in stored.values()]
        outputs = {uuid: future.result() for uuid, (future, _) in stored.items()}
        gone = {run["uuid"] for run, _, _ in ended}
        running = [run for run in active if run["uuid"] not in gone]
        nodes = {name: executor.nodes() for name, executor in self.executors.items()}  # asked every pass
        launches: list[tuple[Executor, dict[str, Any], Launch]] = []
        # The write lock is taken only for something to write: a backlog that cannot start does not
        # hold up submits every pass.
        news = bool(starts or ended or self._decided or self._stopped)
        placements = [] if news else self._plan(index, nodes, running, now)
        if news or placements:
            with self.store.write() as tx:
                self._record_starts(tx, starts, now)
                self._record_ends(tx, ended, outputs, now)
                self._end_stopped(tx, now)
                self._settle(tx, index, now)
                launches = self._claim(tx, self._plan(index, nodes, running, now) if news else placements, now)
        for uuid in starts:  # stored: forgotten only now, so a pass that failed hears of them again
            del self._starting[uuid]
        for uuid in stored:
            del self._storing[uuid]
        for launch in launches:  # after the claim is committed: a large input must not hold up every submit
            self._starting[launch[2].run_uuid] = (self._pool.submit(self._start_one, launch) if launch[0].slow_starts
                                                  else _done(self._start_one(launch)))
        if ended:
            for executor in self.executors.values():
                executor.tidy()  # the ends are stored: what they leave can go (if not, poll() tells again)
        return len(running) + len(launches) + len(index)

    # -- the index -----------------------------------------------------------------------------

    def _absorb(self) -> Index:
        """Bring the index up to date with what was written since the last pass."""
        touched: set[str] = set()
        made: list[dict[str, Any]] = []
        while not self._touched.empty():
            changes = self._touched.get_nowait()
            touched.update(changes.touched)
            made += changes.made
        touched -= self._mine
        self._mine.clear()
        index = self._index
        if index is None:
            index = Index()
            self._decided = []
            self._add(index, self.store.queued_runs())
            self._index = index
        else:  # the new runs first: what touched them since is read back after
            self._add(index, made)
            if touched:
                rows = self.store.queued_runs(list(touched))
                for uuid in touched - {row["uuid"] for row in rows}:
                    index.forget(uuid)  # no longer queued
                self._add(index, rows)
        while not self._changes.empty():
            for event in self._changes.get_nowait():
                if index.tracker and State(event.state).terminal:
                    self._decided += index.tracker.ended(event.uuid, event.state)
        return index

    def _add(self, index: Index, rows: list[dict[str, Any]]) -> None:
        """Queued runs, new or changed: ready ones join their queue, held ones the tracker."""
        new_held = []
        for row in rows:
            uuid = row["uuid"]
            run = Pending(uuid, row["cpu_millis"], row["memory"], row["priority"], row["seq"], row["owner"],
                          row["created_at"])
            if row["desired"] == "run":
                if uuid in index.held:
                    index.forget(uuid)
                index.ready(row["executor"], run)
            elif row["desired"] == "hold" and uuid not in index.held:
                index.forget(uuid)
                index.held[uuid] = Held(row["executor"], run, row["origin_job_uuid"])
                new_held.append(uuid)
            elif row["desired"] not in ("run", "hold"):
                index.forget(uuid)  # asked to stop while queued again (a retry, a start that failed):
                self._stopped[uuid] = row["reason"]  # it ends in the next write
        self._track(index, new_held, {row["origin_job_uuid"]: row["when"] for row in rows if "when" in row})

    def _track(self, index: Index, held: list[str], trees: dict[str, dict[str, Any]] | None = None) -> None:
        """Track the conditions of held runs (those of the jobs that hold them), with the states
        of the jobs they name as the store has them now."""
        if not held:
            return
        trees = dict(trees or {})
        trees.update(self.store.conditions_of([job for job in (index.held[uuid].job for uuid in held)
                                               if job not in trees]))
        states = self.store.job_states(set().union(*(jobs_of(tree) for tree in trees.values())))
        for uuid in held:
            self._decided += index.tracker.add(uuid, trees[index.held[uuid].job], states)

    def _settle(self, tx: Tx, index: Index, now: float) -> None:
        """Apply the decided conditions: release held runs whose condition holds, cancel the
        jobs of those whose condition never can. What that ends decides more, in the same write,
        up to `SETTLED_AT_ONCE`."""
        seen, budget = 0, SETTLED_AT_ONCE
        while budget > 0:
            for event in tx.events[seen:]:
                if index.tracker and State(event.state).terminal:
                    self._decided += index.tracker.ended(event.uuid, event.state)
            seen = len(tx.events)
            if not self._decided:
                return
            decided, self._decided = self._decided[:budget], self._decided[budget:]
            budget -= len(decided)
            release = [d.key for d in decided if d.value and d.key in index.held]
            deciding = {d.job: d.state for d in decided if not d.value and d.key in index.held}
            blamed = {job: CANNOT + self.store.blame(tx.conn, job, state)  # once per job: a fan-out waits
                      for job, state in deciding.items()}  # on one job many times
            doomed = [(d.key, index.held[d.key].job, blamed[d.job]) for d in decided
                      if not d.value and d.key in index.held]
            ready = set(self.store.release(tx, release, now))
            for uuid in release:
                held = index.held[uuid]
                index.forget(uuid)
                if uuid in ready:
                    index.ready(held.executor, dataclasses.replace(held.run, ready_at=now))
            doomed_held = {uuid: index.held[uuid] for uuid, _, _ in doomed}
            for uuid in doomed_held:
                index.forget(uuid)
            # A run other jobs still want stays held, on the condition of one of them.
            for uuid, heir in self.store.cancel_holders(tx, doomed, now).items():
                index.held[uuid] = dataclasses.replace(doomed_held[uuid], job=heir)
                self._track(index, [uuid])

    # -- running runs --------------------------------------------------------------------------

    def _observe(self, active: list[dict[str, Any]], now: float) -> list[tuple[dict[str, Any], State, Exited]]:
        """The runs that ended, and how. A run that cannot be observed holds up no other: it is
        looked at again next pass (and logged the first time)."""
        ended: list[tuple[dict[str, Any], State, Exited]] = []
        for run in active:
            try:
                outcome = self._observe_one(run, now)
            except Exception:
                if run["uuid"] not in self._unobservable:
                    self._unobservable.add(run["uuid"])
                    log.exception("run %s could not be observed; it is left as it is", run["uuid"])
                continue
            self._unobservable.discard(run["uuid"])
            if outcome is not None:
                ended.append((run, *outcome))
        self._unobservable.intersection_update(run["uuid"] for run in active)
        return ended

    def _observe_one(self, run: dict[str, Any], now: float) -> tuple[State, Exited] | None:
        if run["executor"] == DRIVER:
            if run["node"] == self.host and run["pid"] and not _alive(run["pid"]):
                return State.FAILED, Exited(None, "driver exited without finishing")
            if run["lease_until"] is not None and now > run["lease_until"]:
                return State.FAILED, Exited(None, "driver lost: it stopped renewing its lease (killed, or its "
                                                  "machine is gone); its jobs go on")
            return None
        executor = self.executors.get(run["executor"])
        if executor is None:
            return None
        timeout = run["timeout"]
        if run["desired"] == "run" and timeout and run["started_at"] and now - run["started_at"] > timeout:
            run["desired"] = "timeout" if self.store.set_desired(run["uuid"], "timeout") else "cancel"
        if run["desired"] == "run" and self._over_log(executor, run):
            run["desired"] = "log" if self.store.set_desired(run["uuid"], "log") else "cancel"
        if run["desired"] != "run":
            executor.stop(run, now)
        exited = executor.poll(run)
        if exited is not None and run["desired"] == "log":
            for path in executor.log_paths(run).values():  # what it wrote past the limit goes
                with contextlib.suppress(OSError):
                    os.truncate(path, self.max_log)
        return None if exited is None else _outcome(run, exited, timeout, self.max_log)

    def _over_log(self, executor: Executor, run: dict[str, Any]) -> bool:
        if not (self.max_log and self._check_logs):
            return False
        return sum(_size(path) for path in executor.log_paths(run).values()) > self.max_log

    def _end_stopped(self, tx: Tx, now: float) -> None:
        stopped, self._stopped = self._stopped, {}
        for uuid, why in stopped.items():
            self.store.transition(tx, Kind.RUN, uuid, State.QUEUED, State.CANCELLED, why or "cancelled",
                                  finished_at=now)

    def _record_ends(self, tx: Tx, ended: list[tuple[dict[str, Any], State, Exited]],
                     outputs: dict[str, tuple[str, str]], now: float) -> None:
        tried = []
        for run, state, exited in ended:
            values: dict[str, Any] = {"exit_code": exited.exit_code, "finished_at": now}
            why = exited.reason
            executor = self.executors.get(run["executor"])
            if state is State.FAILED and exited.exit_code and executor:  # what it said last: users look there first
                why += _said_last(executor.log_paths(run).get("stderr", ""))
            if not state.terminal:  # it never started: queued again, the scheduler says why
                values, why = {"started_at": None, "node": "", "pid": 0, "handle": ""}, ""
            elif state is State.SUCCEEDED:
                values["output"], problem = outputs[run["uuid"]]
                if problem:
                    state, why = State.FAILED, f"could not store its output: {problem}"
            if state.terminal:
                tried.append({"run_uuid": run["uuid"], "attempt": run["attempt"], "exit_code": exited.exit_code,
                              "reason": why, "memory": run["memory"], "node": run["node"],
                              "started_at": run["started_at"], "finished_at": now})
            if state is State.FAILED and run["desired"] == "run" and run["attempt"] <= run["retries"]:
                state, values, why = State.QUEUED, _retry(run, exited), ""
                log.info("run %s failed (%s): attempt %d next", run["uuid"], exited.reason, run["attempt"] + 1)
            self.store.transition(tx, Kind.RUN, run["uuid"], State.RUNNING, state, why, **values)
            if state.terminal:
                self._mine.add(run["uuid"])
            else:  # queued again: the index takes it back when it reads it
                self._mine.discard(run["uuid"])
        self.store.record_attempts(tx, tried)

    def _store_output(self, run: dict[str, Any]) -> tuple[str, str]:
        """(the digest of a succeeded run's output, "") or ("", what kept it from being stored)."""
        try:
            return self.data.ingest(Path(run["workdir"]) / "out"), ""
        except Exception as e:  # an unreadable file, a link out of the folder
            log.warning("run %s: could not store its output: %s", run["uuid"], e)
            return "", str(e)

    # -- queued runs ---------------------------------------------------------------------------

    def _plan(self, index: Index, nodes: dict[str, list[Node]], running: list[dict[str, Any]], now: float
              ) -> list[tuple[str, str]]:
        """Where ready runs start now, executor by executor; they leave the queue."""
        with self._lent_lock:
            lent = set(self._lent)
        placements = []
        # A lent run's memory stays taken: only its cpu is lent.
        running = [{**r, "cpu_millis": 0} if r["uuid"] in lent else r for r in running]
        charged = charge_all(nodes, running)
        for name in self.executors:
            usage: dict[str, int] = {}
            for r in running:
                if r["executor"] == name:
                    usage[r["owner"]] = usage.get(r["owner"], 0) + r["cpu_millis"]
            queue = index.queue(name)
            result = plan(charged.get(name, []), queue, usage, now)
            self._plans[name] = result
            for run_uuid, node in result.placements:
                index.forget(run_uuid)
                placements.append((run_uuid, node))
        self._reasons = {}
        return placements

    def _claim(self, tx: Tx, placements: list[tuple[str, str]], now: float
               ) -> list[tuple[Executor, dict[str, Any], Launch]]:
        """Claim the placed runs (queued -> running) before they start, so none can start twice."""
        if not placements:
            return []
        by_node: dict[str, list[str]] = {}
        for run_uuid, node in placements:
            by_node.setdefault(node, []).append(run_uuid)
        claimed = []
        for node, uuids in by_node.items():  # a run cancelled meanwhile is no longer queued
            claimed += self.store.transition_many(tx, Kind.RUN, uuids, State.QUEUED, State.RUNNING, "",
                                                  node=node, started_at=now)
        self._mine.update(claimed)
        node_of = dict(placements)
        runs = self.store.runs_for_start(tx, claimed)
        workdirs = {uuid: self.executors[runs[uuid]["executor"]].workdir(uuid) for uuid in claimed}
        tokens = self.store.new_run_tokens(tx, workdirs)
        launches = []
        for run_uuid in claimed:
            run = runs[run_uuid]
            spec = run["spec"]
            # The SDK in the job gives its children the job's executor and image by default, so
            # a runner's whole nest runs the way the runner does.
            env = {**spec.get("env", {}), "JOBNEST_TOKEN": tokens[run_uuid], "JOBNEST_JOB": run["origin_job_uuid"],
                   "JOBNEST_RUN": run_uuid, "JOBNEST_EXECUTOR": run["executor"]}
            if spec.get("image"):
                env["JOBNEST_IMAGE"] = spec["image"]
            launches.append((self.executors[run["executor"]], spec, Launch(
                run_uuid, node_of[run_uuid], spec["argv"], env, spec.get("cwd", ""), run["cpu_millis"],
                run["memory"], self.controller_address, spec.get("image_id") or spec.get("image", ""),
                attempt=run["attempt"], mount_cwd=spec.get("mount_cwd", False), mount_root=spec.get("mount_root", ""))))
        return launches

    def _record_starts(self, tx: Tx, starts: dict[str, Started | Exception], now: float) -> None:
        failed: dict[str, list[str]] = {}
        unreached: list[str] = []
        for run_uuid, outcome in starts.items():
            if isinstance(outcome, Unavailable):
                log.info("run %s waits: %s", run_uuid, outcome)
                unreached.append(run_uuid)
            elif not isinstance(outcome, Started):
                if isinstance(outcome, CorruptData):
                    self.store.forget_outputs(tx.conn, outcome.manifests)
                    outcome = Exception(f"could not lay out its inputs: {outcome.problem}")
                failed.setdefault(str(outcome), []).append(run_uuid)
        self.store.set_started(tx, [(uuid, s) for uuid, s in starts.items() if isinstance(s, Started)])
        self._mine.update(starts.keys() - set(unreached))
        for why, uuids in failed.items():
            self.store.transition_many(tx, Kind.RUN, uuids, State.RUNNING, State.FAILED, why, finished_at=now)
        self.store.transition_many(tx, Kind.RUN, unreached, State.RUNNING, State.QUEUED, "", started_at=None, node="")

    def _start_one(self, launch_of: tuple[Executor, dict[str, Any], Launch]) -> Started | Exception:
        executor, spec, launch = launch_of
        try:
            program = self.programs.unpack(spec["program"], Path(executor.workdir(launch.run_uuid))) \
                if spec.get("program") else ""
            inputs = {name: str(self.data.materialise(d)) for name, d in spec.get("input_data", {}).items()}
        except CorruptData as e:  # its runs are forgotten as the start is recorded
            return e
        except Exception as e:
            return Exception(f"could not lay out its program or inputs: {e}")
        try:
            return executor.start(dataclasses.replace(launch, program=program, inputs=inputs))
        except Unavailable as e:
            return e
        except Exception as e:  # one run that cannot start must not hold up the others
            log.warning("run %s could not start: %s", launch.run_uuid, e)
            return Exception(f"could not start: {e}")

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._store_pool.shutdown(wait=False)


def _done(outcome: Started | Exception) -> "Future[Started | Exception]":
    done: Future[Started | Exception] = Future()
    done.set_result(outcome)
    return done


def _retry(run: dict[str, Any], exited: Exited) -> dict[str, Any]:
    """What a failed run's next attempt changes: out of memory, it gets more."""
    values = {"attempt": run["attempt"] + 1, "started_at": None, "node": "", "pid": 0, "handle": "",
              "exit_code": None}
    if exited.reason == "out of memory" and run["memory"]:
        values["memory"] = int(run["memory"] * run["memory_on_oom"])
    return values


def _said_last(path: str) -> str:
    """": " and the last line a run wrote to `path` (its stderr), or "" if it wrote none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").split("\n")
    except OSError:
        return ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f": {last[:200]}" if last else ""


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _outcome(run: dict[str, Any], exited: Exited, timeout: float, max_log: int) -> tuple[State, Exited]:
    if not exited.started:
        return (State.QUEUED if run["desired"] == "run" else State.CANCELLED), exited
    if run["desired"] == "cancel":
        return State.CANCELLED, Exited(exited.exit_code, run["reason"] or "cancelled")
    if run["desired"] == "timeout":
        return State.FAILED, Exited(exited.exit_code, f"timed out after {timeout:g}s")
    if run["desired"] == "log":
        return State.FAILED, Exited(exited.exit_code, f"stopped: its stdout and stderr passed the limit of "
                                                      f"{max_log} bytes a run may write")
    if exited.exit_code == 0:
        return State.SUCCEEDED, exited
    return State.FAILED, exited


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, or no process can have that pid
        return False
    except PermissionError:
        return True
    return True
