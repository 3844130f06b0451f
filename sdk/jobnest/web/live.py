"""Live job trees for the web monitor, kept by one controller Watch per identity.

A `Hub` holds, for one token, the trees on someone's screen: each listed once, then kept current
by the events of a single Watch of all of them. Events are applied in ticks (`TICK` seconds), so
a burst of a thousand changes is one update; each tick is numbered and remembers which jobs it
touched, so a browser that reconnects with the number it last saw gets what changed since, or a
snapshot when that is too long ago. The controller stays the only source of truth: nothing here
is written back, and a tree that cannot be kept in step is listed again.
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._client import TERMINAL, Client, JobInfo, Stream
from ..errors import InvalidSpec, JobnestError, NotFound, PermissionDenied, Unavailable

TICK = 0.25  # seconds between updates at most
HISTORY = 2000  # ticks remembered for a browser that reconnects
IDLE = 60.0  # seconds a tree nobody asked for is kept
ROOTS_EVERY = 3.0  # seconds between looks for a new root job, while someone shows the roots
UUID = re.compile(r"[0-9a-f]{32}")
MAX_TOPS = 1000  # trees one identity keeps live at once (as many as one Watch takes)
FEW = 50  # new jobs in one tick fetched one by one; more, and their tree is listed again
ROOTS = "@roots"  # touched when a new root job appears


class Tree:
    """A job and everything under it, as listed once and kept current by events."""

    def __init__(self, top: str, jobs: Iterable[JobInfo]) -> None:
        self.top = top
        self.jobs: dict[str, JobInfo] = {}
        self.children: dict[str, list[str]] = collections.defaultdict(list)
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for job in jobs:  # in tree order: a job's parent comes before it
            self.add(job)

    def add(self, job: JobInfo) -> list[str]:
        """Take in a job whose parent is here; returns it and the jobs above it."""
        self.jobs[job.uuid] = job
        if job.uuid != self.top:
            self.children[job.spawned_by_job_uuid].append(job.uuid)
        above = list(self.ancestors(job.uuid))
        for a in above:
            self.counts[a][job.state] += 1
        return [job.uuid, *above]

    def ancestors(self, uuid: str) -> Iterable[str]:
        while uuid != self.top and (uuid := self.jobs[uuid].spawned_by_job_uuid) in self.jobs:
            yield uuid

    def apply(self, uuid: str, state: str, reason: str, exit_code: int | None) -> list[str]:
        """Take in a known job's new state; returns it and the jobs above it."""
        job = self.jobs[uuid]
        now = time.time()
        self.jobs[uuid] = job._replace(
            state=state, reason=reason, exit_code=exit_code,
            started_at=job.started_at or (now if state == "running" else None),
            finished_at=job.finished_at or (now if state in TERMINAL else None))
        above = list(self.ancestors(uuid))
        for a in above:
            self.counts[a][job.state] -= 1
            self.counts[a][state] += 1
        return [uuid, *above]

    def row(self, uuid: str) -> dict[str, Any]:
        """What the browser shows of a job."""
        j = self.jobs[uuid]
        return {"uuid": j.uuid, "name": j.name, "state": j.state, "reason": j.reason, "owner": j.owner,
                "parent": j.spawned_by_job_uuid, "run": j.run_uuid, "reused": j.reused,
                "origin": j.run_origin_job_uuid, "exit_code": j.exit_code, "cpu": j.cpu, "memory": j.memory,
                "created": j.created_at, "started": j.started_at, "finished": j.finished_at, "node": j.node,
                "executor": j.executor, "children": len(self.children.get(uuid, ())),
                "counts": {s: n for s, n in self.counts.get(uuid, {}).items() if n}}


class Hub:
    """The trees one identity has on screen, and the numbered ticks that changed them."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Condition()  # held to change a tree, and to read one
        self.trees: dict[str, Tree] = {}
        self._used: dict[str, float] = {}  # top -> when last asked for
        self._wanted: set[str] = set()  # tops to list once the watch covers them
        self._events: list[Any] = []
        self._relisted: set[str] = set()
        self._stream: Stream | None = None
        self._watched: tuple[str, ...] = ()
        self.seq = 0
        self._history: collections.deque[tuple[int, frozenset[str]]] = collections.deque(maxlen=HISTORY)
        self._listeners: set[Callable[[], None]] = set()
        self._newest_root: str | None = None
        self._roots_shown = 0.0  # when someone last showed the roots
        self.failed: dict[str, JobnestError] = {}  # tops that could not be listed, and why
        self.closed = False
        self._generation = 0  # of restarts asked for
        threading.Thread(target=self._watch, name="web-watch", daemon=True).start()
        threading.Thread(target=self._tick, name="web-tick", daemon=True).start()

    # -- for requests ---------------------------------------------------------------------------

    def trees_of(self, tops: Iterable[str], timeout: float = 30) -> dict[str, Tree]:
        """The trees under `tops`, listed and watched from now on; a top that cannot be listed (not
        visible, say) is left out, and what went wrong is in `failed`."""
        tops = list(dict.fromkeys(tops))
        with self.lock:
            for top in [t for t in tops if not UUID.fullmatch(t)]:  # a prefix or a name would be a second name
                self.failed[top] = InvalidSpec(f"must be a job's whole uuid, got {top[:40]!r}", field="tops")
                tops.remove(top)
            now = time.monotonic()
            self._used.update(dict.fromkeys(tops, now))
            missing = [t for t in tops if t not in self.trees]
            if missing:
                self._wanted.update(missing)
                self._restart()
                self.lock.wait_for(lambda: not self._wanted.intersection(missing), timeout)
            return {t: self.trees[t] for t in tops if t in self.trees}

    def tree(self, top: str) -> Tree:
        """The tree under `top`, or the error that kept it from being listed."""
        found = self.trees_of([top])
        if top not in found:
            raise self.failed.get(top) or NotFound(f"job {top} could not be listed in time", field="uuid")
        return found[top]

    def find(self, uuid: str) -> Tree | None:
        """A tree this hub keeps that holds `uuid`, if any."""
        with self.lock:
            return next((t for t in self.trees.values() if uuid in t.jobs), None)

    def show_roots(self) -> None:
        self._roots_shown = time.monotonic()

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` after each tick (from another thread); returns how to stop."""
        with self.lock:
            self._listeners.add(wake)
        return lambda: self._listeners.discard(wake)

    def touched_since(self, seq: int) -> frozenset[str] | None:
        """The jobs changed by the ticks after `seq`, or None when those are no longer all known."""
        with self.lock:
            if seq == self.seq:
                return frozenset()
            if seq > self.seq or not self._history or self._history[0][0] > seq + 1:
                return None
            return frozenset().union(*(t for s, t in self._history if s > seq))

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._restart()
            self.lock.notify_all()

    # -- the watch and the ticks ----------------------------------------------------------------

    def _restart(self) -> None:
        """Have the watch begin anew (the lock held), over what is wanted now."""
        self._generation += 1
        if self._stream is not None:
            self._stream.cancel()
        self.lock.notify_all()

    def _watch(self) -> None:
        """Keep one Watch open over every top wanted or kept; once it is on, list the tops
        wanted first, then again the kept ones (changes between two watches were not seen)."""
        check_all = False
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self.closed or bool(self._wanted)
                                    or set(self.trees) != set(self._watched))
                if self.closed:
                    return
                generation = self._generation
                tops = sorted(set(self.trees) | self._wanted, key=lambda t: -self._used.get(t, 0))
                for top in tops[MAX_TOPS:]:  # the least recently asked for go
                    self._fail(top, Unavailable(f"more than {MAX_TOPS} trees are shown at once", field="tops"))
                tops = tops[:MAX_TOPS]
                wanted = set(self._wanted)
                unchecked = set(tops) if check_all else wanted
            tops = [t for t in tops if t not in unchecked or self._visible(t)]
            with self.lock:
                if generation != self._generation or self.closed:
                    continue  # asked for more meanwhile: begin with that
                stream = self._stream = self.client.watch(subtrees=tops) if tops else None
                self._watched = tuple(tops)
            check_all = False
            if stream is None:
                continue
            try:
                live = set()
                for event in stream:
                    if event.initial:
                        live.add(event.uuid)
                        if len(live) == len(tops):  # the watch is on: what is listed now stays current
                            self._list(sorted(tops, key=lambda t: t not in wanted))
                        continue
                    with self.lock:
                        self._events.append(event)
            except (NotFound, PermissionDenied):
                check_all = True  # a top went (collected, say): watch the others
            except JobnestError:
                time.sleep(1)  # the controller restarts: watch again, then list again
            with self.lock:
                self._watched = ()  # however it ended, watch again

    def _visible(self, top: str) -> bool:
        """Whether `top` may be watched; if not, it is dropped, and why is kept in `failed`."""
        try:
            self.client.get(top)
            return True
        except JobnestError as e:
            with self.lock:
                self._fail(top, e)
            return False

    def _fail(self, top: str, error: JobnestError) -> None:
        self.failed[top] = error
        if len(self.failed) > HISTORY:
            self.failed.pop(next(iter(self.failed)))
        self._wanted.discard(top)
        self.trees.pop(top, None)
        self._used.pop(top, None)
        self.lock.notify_all()

    def _list(self, tops: Iterable[str]) -> None:
        for top in tops:
            try:
                tree = Tree(top, self.client.list(subtree=top))
            except JobnestError as e:
                with self.lock:
                    self._fail(top, e)
                continue
            with self.lock:
                self._wanted.discard(top)
                self.trees[top] = tree
                self._relisted.update(tree.jobs)  # a browser showing it sees it anew
                self.lock.notify_all()

    def _take_in(self, top: str, uuids: list[str]) -> set[str]:
        """Add jobs new under `top`: a few one by one, many (or when that fails) by listing the
        tree again; returns the jobs changed."""
        try:
            if len(uuids) <= FEW:
                jobs = [self.client.get(uuid) for uuid in uuids]
                with self.lock:
                    tree = self.trees.get(top)
                    return {u for job in jobs if tree and job.uuid not in tree.jobs
                            and job.spawned_by_job_uuid in tree.jobs for u in tree.add(job)}
        except JobnestError:
            pass
        try:
            fresh = Tree(top, self.client.list(subtree=top))
        except JobnestError:
            with self.lock:
                self._restart()  # cannot tell what it holds: watch and list again
            return set()
        with self.lock:
            old = self.trees.get(top)
            if old is None:
                return set()
            self.trees[top] = fresh
            return {u for u, job in fresh.jobs.items()
                    if old.jobs.get(u) != job or old.counts.get(u) != fresh.counts.get(u)
                    or len(fresh.children.get(u, ())) != len(old.children.get(u, ()))}

    def _tick(self) -> None:
        next_roots = 0.0
        while not self.closed:
            time.sleep(TICK)
            touched: set[str] = set()
            now = time.monotonic()
            if now - self._roots_shown < 2 * ROOTS_EVERY and now >= next_roots:
                next_roots = now + ROOTS_EVERY
                with contextlib.suppress(JobnestError):
                    newest = next(iter(self.client.list(roots=True, limit=1, newest_first=True)), None)
                    uuid = newest.uuid if newest else ""
                    if self._newest_root is not None and uuid != self._newest_root:
                        touched.add(ROOTS)
                    self._newest_root = uuid
            new: dict[str, list[str]] = collections.defaultdict(list)  # top -> jobs new under it
            with self.lock:
                events, self._events = self._events, []
                touched |= self._relisted
                self._relisted = set()
                for e in events:
                    for top, tree in self.trees.items():
                        if e.uuid in tree.jobs:
                            touched.update(tree.apply(e.uuid, e.state, e.reason,
                                                      e.exit_code if e.has_exit_code else None))
                        elif e.spawned_by_job_uuid in tree.jobs or e.spawned_by_job_uuid in new[top]:
                            new[top].append(e.uuid)  # in commit order: a parent before its children
                for top in [t for t, used in self._used.items() if now - used > IDLE and not self._listeners]:
                    self.trees.pop(top, None)
                    del self._used[top]
            for top, uuids in new.items():
                touched |= self._take_in(top, uuids)
            if touched:
                with self.lock:
                    self.seq += 1
                    self._history.append((self.seq, frozenset(touched)))
                    listeners = list(self._listeners)
                for wake in listeners:
                    wake()
