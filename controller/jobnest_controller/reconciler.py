"""The reconciler: moves runs toward what the store says they should be.

Each `tick(now)` observes running runs (exits, cancels, timeouts, dead drivers), then asks the
scheduler where queued runs go and starts them. The controller calls it in a loop; tests call it
directly with their own clock.
"""

import dataclasses
import logging
import os
import socket
from pathlib import Path
from typing import Any

from jobnest.errors import Unavailable

from . import conditions
from .data import Data
from .executors.base import Executor, Exited, Launch
from .programs import Programs
from .scheduler import Node, Pending, charge, plan
from .states import State
from .store import DRIVER, Kind, Store

log = logging.getLogger(__name__)
# Runs planned per pass, from the head of the queue: the rest cannot start before these anyway
# on nodes of this size, and planning a huge backlog every pass would starve the server.
PLAN_WINDOW = 2000
FULL_PLAN_EVERY = 1.0
ALL_FULL = "waiting for cpu: every node is fully used"


class Reconciler:
    def __init__(self, store: Store, executors: dict[str, Executor], controller_address: str,
                 programs: Programs, data: Data) -> None:
        self.store = store
        self.programs = programs
        self.data = data
        self.executors = executors
        self.controller_address = controller_address
        self.host = socket.gethostname()
        self._dirty = True  # something was submitted or cancelled since the last plan
        self._queued = 0  # queued runs left after the last plan
        self._planned_seq = 0  # the newest queued run the last plan saw
        self._full_plan_at = float("-inf")
        # Why each queued run waits, as of the last plan. Kept here, not in the store: it is an
        # explanation recomputed every plan, and writing it for every queued run cost as much
        # as storing the runs.
        self._waiting: dict[str, str] = {}
        self._all_full = False
        self._conditions: dict[str, tuple[dict[str, Any], set[str]]] = {}  # job -> (condition, jobs it names)
        self._conditions_checked_at = float("-inf")
        self._changes = store.bus.subscribe()  # job state changes, to know which conditions to look at

    def waiting_reason(self, run_uuid: str) -> str:
        """Why a queued run has not started, or "" if the scheduler has not looked at it yet."""
        return ALL_FULL if self._all_full else self._waiting.get(run_uuid, "")

    def poke(self) -> None:
        """Something was submitted or cancelled: plan again at the next tick."""
        self._dirty = True

    def tick(self, now: float) -> int:
        """One pass; returns the number of runs still live (queued or running).

        Placement is planned only when it could change. When capacity freed up (a run ended), the
        head of the whole queue is planned again. When only submissions came, just the new runs
        are: the older ones did not fit before and capacity has not grown since. A full plan also
        runs every `FULL_PLAN_EVERY` seconds to refresh reasons and counts. And while every node
        is full, nothing is planned at all: nothing could be placed (the usual state of a backlog).
        """
        active = self.store.active_runs()
        ended = self._observe(active, now)
        running = [r for r in active if r["uuid"] not in ended]
        nodes = {name: charge(ex.nodes(), [r for r in running if r["executor"] == name])
                 for name, ex in self.executors.items()}
        self._all_full = all(nodes.values()) and not any(n.cpu_free > 0 for ns in nodes.values() for n in ns)
        changes = bool(self._conditions) and not self._changes.empty()  # only matter while jobs wait on them
        if ended or self._dirty or changes or now - self._full_plan_at >= FULL_PLAN_EVERY:
            self._decide_conditions(now)
        if self._all_full:
            return len(running) + max(self._queued, 1)  # the queue is unknown, and waits
        if ended or now - self._full_plan_at >= FULL_PLAN_EVERY:
            self._dirty = False
            self._full_plan_at = now
            self._queued = self._schedule(nodes, now, after_seq=0)
        elif self._dirty:
            self._dirty = False
            self._queued += self._schedule(nodes, now, after_seq=self._planned_seq)
        return len(running) + self._queued

    # -- conditions ----------------------------------------------------------------------------

    def _decide_conditions(self, now: float) -> None:
        """Release held runs whose condition holds; cancel jobs whose condition never can.

        Only conditions that are new or that name a job whose state changed since the last look
        are evaluated, except every `FULL_PLAN_EVERY` seconds, when all are."""
        changed = set()
        while not self._changes.empty():
            changed.add(self._changes.get_nowait().uuid)
        held = self.store.held_runs()
        everything = now - self._conditions_checked_at >= FULL_PLAN_EVERY
        due = []
        for run_uuid, job_uuid in held:
            known = self._conditions.get(job_uuid)
            if known is None:  # parsed once per job, not once per pass
                tree = self.store.condition_of(job_uuid)
                known = self._conditions[job_uuid] = (tree, conditions.jobs_of(tree))
                due.append((run_uuid, job_uuid))
            elif everything or known[1] & changed:
                due.append((run_uuid, job_uuid))
        if everything:
            self._conditions_checked_at = now
        held_jobs = {job for _, job in held}
        self._conditions = {job: c for job, c in self._conditions.items() if job in held_jobs}
        if not due:
            return
        states = self.store.job_states(set().union(*(self._conditions[job][1] for _, job in due)))
        released = []
        for run_uuid, job_uuid in due:
            value, decider = conditions.evaluate(self._conditions[job_uuid][0], states)
            if value:
                released.append(run_uuid)
            elif value is False:
                self.store.cancel(job_uuid, f"condition cannot hold: job {decider} {states[decider or '']}", now)
        if released:
            self.store.release(released, now)
            self._full_plan_at = float("-inf")  # they are older than the newest run planned: plan all

    # -- running runs --------------------------------------------------------------------------

    def _observe(self, active: list[dict[str, Any]], now: float) -> set[str]:
        """Record the runs that ended; returns their uuids."""
        ended: list[tuple[dict[str, Any], State, Exited]] = []
        for run in active:
            if run["executor"] == DRIVER:
                if run["node"] == self.host and run["pid"] and not _alive(run["pid"]):
                    ended.append((run, State.FAILED, Exited(None, "driver exited without finishing")))
                continue
            executor = self.executors.get(run["executor"])
            if executor is None:
                continue
            timeout = run["timeout"]
            if run["desired"] == "run" and timeout and run["started_at"] and now - run["started_at"] > timeout:
                run["desired"] = "timeout" if self.store.set_desired(run["uuid"], "timeout") else "cancel"
            if run["desired"] != "run":
                executor.stop(run, now)
            exited = executor.poll(run)
            if exited is not None:
                ended.append((run, *_outcome(run, exited, timeout)))
        if ended:
            # Outputs are stored before the write, which would hold up every submit meanwhile.
            outputs = {run["uuid"]: self._store_output(run) for run, state, _ in ended if state is State.SUCCEEDED}
            with self.store.write() as tx:
                for run, state, exited in ended:
                    values: dict[str, Any] = {"exit_code": exited.exit_code, "finished_at": now}
                    reason = exited.reason
                    if not state.terminal:  # it never started: queued again, the scheduler says why
                        values, reason = {"started_at": None, "node": "", "pid": 0, "handle": ""}, ""
                    elif state is State.SUCCEEDED:
                        values["output"], problem = outputs[run["uuid"]]
                        if problem:
                            state, reason = State.FAILED, f"could not store its output: {problem}"
                    if state is State.FAILED and run["desired"] == "run" and run["attempt"] <= run["retries"]:
                        state, values, reason = State.QUEUED, _retry(run, exited), ""
                        log.info("run %s failed (%s): attempt %d next", run["uuid"], exited.reason, run["attempt"] + 1)
                    self.store.transition(tx, Kind.RUN, run["uuid"], State.RUNNING, state, reason, **values)
            for executor in self.executors.values():
                executor.tidy()  # the ends are stored: what they leave can go (if not, poll() tells again)
        return {run["uuid"] for run, _, _ in ended}

    def _store_output(self, run: dict[str, Any]) -> tuple[str, str]:
        """(the digest of a succeeded run's output, "") or ("", what kept it from being stored)."""
        try:
            return self.data.ingest(Path(run["workdir"]) / "out"), ""
        except Exception as e:  # an unreadable file, a link out of the folder
            log.warning("run %s: could not store its output: %s", run["uuid"], e)
            return "", str(e)

    # -- queued runs ---------------------------------------------------------------------------

    def _schedule(self, nodes: dict[str, list[Node]], now: float, after_seq: int) -> int:
        """Plan and start the queued runs newer than `after_seq`; returns how many stay queued."""
        pending = self.store.pending_runs(PLAN_WINDOW, after_seq)
        if not pending:
            return 0
        self._planned_seq = max(self._planned_seq, max(r["seq"] for r in pending))
        placements: list[tuple[str, str]] = []
        reasons: dict[str, str] = {}
        for name, executor_nodes in nodes.items():
            mine = [Pending(r["uuid"], r["cpu_millis"], r["memory"], r["priority"], r["seq"])
                    for r in pending if r["executor"] == name]
            result = plan(executor_nodes, mine)
            placements += result.placements
            if executor_nodes:
                reasons.update(result.unplaced)
            else:
                reasons.update(dict.fromkeys(result.unplaced, self.executors[name].why_no_nodes()))
        for run in pending:
            if run["executor"] not in self.executors:
                reasons[run["uuid"]] = f"waiting: no executor named {run['executor']!r} is configured"
        if after_seq == 0:
            self._waiting = reasons  # swapped whole: readers on other threads see one plan or the other
        else:
            self._waiting.update(reasons)
        for run_uuid, _ in placements:
            self._waiting.pop(run_uuid, None)
        self._start(placements, now)
        return len(pending) - len(placements)

    def _start(self, placements: list[tuple[str, str]], now: float) -> None:
        """Claim the runs (queued -> running) before starting them, so none can start twice."""
        if not placements:
            return
        launches: list[tuple[Executor, dict[str, Any], Launch]] = []
        with self.store.write() as tx:
            for run_uuid, node in placements:
                run = self.store.run_for_start(tx, run_uuid)
                executor = self.executors[run["executor"]]
                if not self.store.transition(tx, Kind.RUN, run_uuid, State.QUEUED, State.RUNNING, "",
                                             node=node, started_at=now, workdir=executor.workdir(run_uuid)):
                    continue  # cancelled meanwhile
                token = self.store.new_run_token(tx, run_uuid)
                spec = run["spec"]
                # The SDK in the job gives its children the job's executor, image and program by
                # default, so a runner's whole nest runs the way the runner does.
                env = {**spec.get("env", {}), "JOBNEST_TOKEN": token, "JOBNEST_JOB": run["origin_job_uuid"],
                       "JOBNEST_RUN": run_uuid, "JOBNEST_EXECUTOR": run["executor"]}
                if spec.get("image"):
                    env["JOBNEST_IMAGE"] = spec["image"]
                if spec.get("program"):
                    env["JOBNEST_PROGRAM"] = spec["program"]
                launches.append((executor, spec, Launch(
                    run_uuid, node, spec["argv"], env, spec.get("cwd", ""), run["cpu_millis"], run["memory"],
                    self.controller_address, spec.get("image_id") or spec.get("image", ""), attempt=run["attempt"],
                    mount_cwd=spec.get("mount_cwd", False))))
        started: list[tuple[str, dict[str, Any]]] = []
        failed: list[tuple[str, str]] = []
        unreached: list[str] = []
        for executor, spec, launch in launches:
            try:  # after the claim is committed: a large input must not hold up every submit
                program = self.programs.unpack(spec["program"], Path(executor.workdir(launch.run_uuid))) \
                    if spec.get("program") else ""
                inputs = {name: str(self.data.materialise(d)) for name, d in spec.get("input_data", {}).items()}
            except Exception as e:
                failed.append((launch.run_uuid, f"could not lay out its program or inputs: {e}"))
                continue
            try:
                s = executor.start(dataclasses.replace(launch, program=program, inputs=inputs))
            except Unavailable as e:
                log.info("run %s waits: %s", launch.run_uuid, e)
                unreached.append(launch.run_uuid)
                continue
            except Exception as e:  # one run that cannot start must not hold up the others
                log.warning("run %s could not start: %s", launch.run_uuid, e)
                failed.append((launch.run_uuid, f"could not start: {e}"))
                continue
            started.append((launch.run_uuid, {"pid": s.pid, "handle": s.handle, "workdir": s.workdir,
                                              "cpu_enforced": s.cpu_enforced}))
        with self.store.write() as tx:
            for run_uuid, values in started:
                self.store.set_run_values(tx, run_uuid, values)
            for run_uuid, reason in failed:
                self.store.transition(tx, Kind.RUN, run_uuid, State.RUNNING, State.FAILED, reason,
                                      finished_at=now)
            for run_uuid in unreached:
                self.store.transition(tx, Kind.RUN, run_uuid, State.RUNNING, State.QUEUED, "",
                                      started_at=None, node="")


def _retry(run: dict[str, Any], exited: Exited) -> dict[str, Any]:
    """What a failed run's next attempt changes: out of memory, it gets more."""
    values = {"attempt": run["attempt"] + 1, "started_at": None, "node": "", "pid": 0, "handle": "",
              "exit_code": None}
    if exited.reason == "out of memory" and run["memory"]:
        values["memory"] = int(run["memory"] * run["memory_on_oom"])
    return values


def _outcome(run: dict[str, Any], exited: Exited, timeout: float) -> tuple[State, Exited]:
    if not exited.started:
        return (State.QUEUED if run["desired"] == "run" else State.CANCELLED), exited
    if run["desired"] == "cancel":
        return State.CANCELLED, Exited(exited.exit_code, run["reason"] or "cancelled")
    if run["desired"] == "timeout":
        return State.FAILED, Exited(exited.exit_code, f"timed out after {timeout:g}s")
    if exited.exit_code == 0:
        return State.SUCCEEDED, exited
    return State.FAILED, exited


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
